"""Qwen3 grouped-query self-attention with per-head q/k RMSNorm and RoPE."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from bagpiper_jax.config import ModelConfig, RuntimeConfig
from bagpiper_jax.model.attention_kernels import get_kernel
from bagpiper_jax.model.kv_cache import cached_attention
from bagpiper_jax.model.norm import RMSNorm
from bagpiper_jax.model.rope import apply_rope
from bagpiper_jax.sharding import Rules, constrain, param


class Attention(nnx.Module):
    """Self-attention over packed rows ``x [batch, frames, hidden]``."""

    def __init__(self, cfg: ModelConfig, runtime: RuntimeConfig, rules: Rules, *, rngs: nnx.Rngs):
        init = jax.nn.initializers.normal(cfg.init_std)
        dtype = jnp.dtype(runtime.param_dtype)
        d, h, k, hd = cfg.hidden, cfg.heads, cfg.kv_heads, cfg.head_dim
        self.q_proj = param(init(rngs.params(), (d, h, hd), dtype), ("embed", "q_heads", "head_dim"))
        self.k_proj = param(init(rngs.params(), (d, k, hd), dtype), ("embed", "kv_heads", "head_dim"))
        self.v_proj = param(init(rngs.params(), (d, k, hd), dtype), ("embed", "kv_heads", "head_dim"))
        self.o_proj = param(init(rngs.params(), (h, hd, d), dtype), ("q_heads", "head_dim", "embed"))
        self.q_norm = RMSNorm(hd, cfg.rms_eps, "head_dim", dtype)
        self.k_norm = RMSNorm(hd, cfg.rms_eps, "head_dim", dtype)
        self.rope_theta = cfg.rope_theta
        self.kernel = get_kernel(runtime, rules)
        self.rules = rules

    def __call__(self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array) -> jax.Array:
        """``positions``, ``segment_ids``: ``[batch, frames]`` (positions restart per segment)."""
        q, k, v = self.project(x, positions)
        return self.output(checkpoint_name(self.kernel(q, k, v, segment_ids), "attention_out"))

    def extend(
        self,
        x: jax.Array,
        positions: jax.Array,
        mask: jax.Array,
        cache_k: jax.Array,
        cache_v: jax.Array,
        start: jax.Array,
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Attention of ``x [batch, frames, hidden]`` (the frames at cache slots ``start ...``)
        over one layer's cache ``[batch, slots, kv_heads, head_dim]`` with these frames written
        in; ``mask [batch, frames, slots]`` (see :mod:`bagpiper_jax.model.kv_cache`).

        Returns ``(output [batch, frames, hidden], k, v [batch, frames, kv_heads, head_dim])``:
        the new keys/values for the caller to store.
        """
        q, k, v = self.project(x, positions)
        keys = jax.lax.dynamic_update_slice_in_dim(cache_k, k.astype(cache_k.dtype), start, axis=1)
        values = jax.lax.dynamic_update_slice_in_dim(cache_v, v.astype(cache_v.dtype), start, axis=1)
        return self.output(cached_attention(q, keys, values, mask)), k, v

    def project(self, x: jax.Array, positions: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``q [batch, frames, heads, head_dim]`` and ``k, v [.., kv_heads, head_dim]``:
        projected, QK-normed and rotated."""
        dtype = x.dtype
        q = jnp.einsum("btd,dhk->bthk", x, self.q_proj[...].astype(dtype))
        k = jnp.einsum("btd,dhk->bthk", x, self.k_proj[...].astype(dtype))
        v = jnp.einsum("btd,dhk->bthk", x, self.v_proj[...].astype(dtype))
        q = apply_rope(self.q_norm(q), positions, self.rope_theta)
        k = apply_rope(self.k_norm(k), positions, self.rope_theta)
        q = constrain(q, ("activation_batch", "activation_length", "activation_heads", None), self.rules)
        k = constrain(k, ("activation_batch", "activation_length", "activation_kv_heads", None), self.rules)
        v = constrain(v, ("activation_batch", "activation_length", "activation_kv_heads", None), self.rules)
        return checkpoint_name(q, "query"), checkpoint_name(k, "key"), checkpoint_name(v, "value")

    def output(self, out: jax.Array) -> jax.Array:
        """``[batch, frames, heads, head_dim]`` -> ``[batch, frames, hidden]``."""
        return jnp.einsum("bthk,hkd->btd", out, self.o_proj[...].astype(out.dtype))
