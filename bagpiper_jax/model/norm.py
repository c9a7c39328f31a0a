"""RMSNorm as in HF Qwen3: statistics and scaling in float32."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from bagpiper_jax.sharding import param


class RMSNorm(nnx.Module):
    """``x * rsqrt(mean(x²) + eps) * scale`` over the last axis ``[..., dim]``."""

    def __init__(self, dim: int, eps: float, axis_name: str = "norm", param_dtype=jnp.float32):
        self.scale = param(jnp.ones((dim,), param_dtype), (axis_name,))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (y * self.scale[...].astype(jnp.float32)).astype(x.dtype)
