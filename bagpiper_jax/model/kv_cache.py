"""Preallocated key/value cache for incremental decoding, and attention over it.

The cache holds every layer's rotated keys and values in static-shape slabs
``[layers, batch, slots, kv_heads, head_dim]``. Rows are left-padded: row ``b``'s frames
occupy slots ``first[b], first[b] + 1, ...`` and all rows write the same slot range at
each call (one ``dynamic_update_slice``), so a step costs the same for every row and the
write happens in place. Frame ``slot`` of row ``b`` has RoPE position ``slot - first[b]``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from bagpiper_jax.sharding import Rules, constrain

CACHE_AXES = (None, "activation_batch", "activation_length", "activation_kv_heads", None)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    """k, v: ``[layers, batch, slots, kv_heads, head_dim]`` in the compute dtype."""

    k: jax.Array
    v: jax.Array

    @classmethod
    def zeros(
        cls, layers: int, batch: int, slots: int, kv_heads: int, head_dim: int, dtype, rules: Rules = ()
    ) -> KVCache:
        def slab():
            return constrain(jnp.zeros((layers, batch, slots, kv_heads, head_dim), dtype), CACHE_AXES, rules)

        return cls(slab(), slab())

    @property
    def slots(self) -> int:
        return self.k.shape[2]


def cache_mask(first: jax.Array, start: jax.Array, frames: int, slots: int) -> jax.Array:
    """``[batch, frames, slots]`` bool: query frame ``t`` (slot ``start + t``) of row ``b``
    sees the slots ``first[b] <= s <= start + t`` (causal, left padding excluded)."""
    query = start + jnp.arange(frames)[:, None]
    key = jnp.arange(slots)[None, :]
    return (key[None] >= first[:, None, None]) & (key <= query)[None]


def cached_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Grouped-query attention of ``q [batch, frames, heads, head_dim]`` over the cache
    slots ``k, v [batch, slots, kv_heads, head_dim]`` with ``mask [batch, frames, slots]``;
    softmax in float32. Returns ``[batch, frames, heads, head_dim]``."""
    batch, frames, heads, head_dim = q.shape
    kv_heads = k.shape[2]
    q = q.reshape(batch, frames, kv_heads, heads // kv_heads, head_dim)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32) * head_dim**-0.5
    scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(batch, frames, heads, head_dim)
