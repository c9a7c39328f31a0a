"""Restricted sampling: mask, top-k cut, temperature (0 = greedy), explicit PRNG keys."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def sample(
    logits: jax.Array, allowed: jax.Array, temperature: jax.Array, top_k: jax.Array, keys: jax.Array, max_top_k: int
) -> jax.Array:
    """Draws one id per row (and per inner position) among the allowed ones.

    Args:
      logits: float32 ``[rows, ..., vocab]``; allowed: bool, same shape (at least one True
        per distribution).
      temperature: ``[rows]``; 0 = greedy (argmax of the allowed logits).
      top_k: int ``[rows]``; keep the ``top_k`` largest allowed logits (0 = all).
      keys: ``[rows]`` PRNG keys, one per row.
      max_top_k: static upper bound of ``top_k`` (0: no top-k cut at all).
    Returns:
      int32 ``[rows, ...]`` indices into the last axis.
    """
    x = jnp.where(allowed, logits, -jnp.inf)
    expand = (slice(None),) + (None,) * (x.ndim - 1)
    if max_top_k:
        kth = jax.lax.top_k(x, min(max_top_k, x.shape[-1]))[0]
        k = jnp.clip(top_k, 1, kth.shape[-1])
        threshold = jnp.take_along_axis(kth, jnp.broadcast_to((k - 1)[expand], kth.shape[:-1] + (1,)), axis=-1)
        x = jnp.where((top_k[expand] > 0) & (x < threshold), -jnp.inf, x)
    greedy = jnp.argmax(x, axis=-1)
    scaled = x / jnp.maximum(temperature, 1e-6)[expand]
    drawn = jax.vmap(lambda key, row: jax.random.categorical(key, row, axis=-1))(keys, scaled)
    return jnp.where((temperature > 0)[expand[:-1]], drawn, greedy).astype(jnp.int32)
