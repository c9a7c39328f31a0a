"""The Qwen3 decoder: pre-norm blocks, stacked along a "layers" axis and scanned."""
from __future__ import annotations

import jax
from flax import nnx

from bagpiper_jax.config import ModelConfig
from bagpiper_jax.model.attention import Attention
from bagpiper_jax.model.mlp import MLP
from bagpiper_jax.model.norm import RMSNorm
from bagpiper_jax.sharding import Rules, constrain

HIDDEN_AXES = ("activation_batch", "activation_length", "activation_embed")

REMAT_POLICIES = {
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "full": jax.checkpoint_policies.nothing_saveable,
}


class Block(nnx.Module):
    """``x + attn(norm(x))`` then ``x + mlp(norm(x))`` on ``x [batch, frames, hidden]``."""

    def __init__(self, cfg: ModelConfig, rules: Rules, *, rngs: nnx.Rngs):
        self.attn_norm = RMSNorm(cfg.hidden, cfg.rms_eps, param_dtype=cfg.param_dtype)
        self.attn = Attention(cfg, rules, rngs=rngs)
        self.mlp_norm = RMSNorm(cfg.hidden, cfg.rms_eps, param_dtype=cfg.param_dtype)
        self.mlp = MLP(cfg, rules, rngs=rngs)
        self.rules = rules

    def __call__(self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array) -> jax.Array:
        x = x + self.attn(self.attn_norm(x), positions, segment_ids)
        x = x + self.mlp(self.mlp_norm(x))
        return constrain(x, HIDDEN_AXES, self.rules)


class Decoder(nnx.Module):
    """``cfg.layers`` blocks whose parameters carry a leading "layers" axis.

    The forward pass is one ``lax.scan`` over that axis (compile time independent of
    depth), each step rematerialised per ``cfg.remat`` (none | dots | full).
    """

    def __init__(self, cfg: ModelConfig, rules: Rules, *, rngs: nnx.Rngs):
        @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make_blocks(key):
            return Block(cfg, rules, rngs=nnx.Rngs(params=key))

        self.blocks = make_blocks(jax.random.split(rngs.params(), cfg.layers))
        self.remat = cfg.remat

    def __call__(self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array) -> jax.Array:
        graphdef, stacked = nnx.split(self.blocks)

        def step(h, layer_params):
            return nnx.merge(graphdef, layer_params)(h, positions, segment_ids), None

        if self.remat != "none":
            step = jax.checkpoint(step, policy=REMAT_POLICIES[self.remat], prevent_cse=False)
        x, _ = jax.lax.scan(step, x, stacked)
        return x
