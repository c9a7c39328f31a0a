"""SwiGLU feed-forward block (Qwen3 MLP, no biases)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from bagpiper_jax.config import ModelConfig, RuntimeConfig
from bagpiper_jax.sharding import Rules, constrain, param


class MLP(nnx.Module):
    """``down(silu(x @ gate) * (x @ up))`` for ``x [batch, frames, hidden]``."""

    def __init__(self, cfg: ModelConfig, runtime: RuntimeConfig, rules: Rules, *, rngs: nnx.Rngs):
        init = jax.nn.initializers.normal(cfg.init_std)
        dtype = jnp.dtype(runtime.param_dtype)
        self.gate = param(init(rngs.params(), (cfg.hidden, cfg.mlp), dtype), ("embed", "mlp"))
        self.up = param(init(rngs.params(), (cfg.hidden, cfg.mlp), dtype), ("embed", "mlp"))
        self.down = param(init(rngs.params(), (cfg.mlp, cfg.hidden), dtype), ("mlp", "embed"))
        self.rules = rules

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = x.dtype
        h = jax.nn.silu(x @ self.gate[...].astype(dtype)) * (x @ self.up[...].astype(dtype))
        h = constrain(h, ("activation_batch", "activation_length", "activation_mlp"), self.rules)
        return h @ self.down[...].astype(dtype)
