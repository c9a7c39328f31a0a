"""The Qwen3 decoder: pre-norm blocks, stacked along a "layers" axis and scanned."""

from __future__ import annotations

import operator

import jax
import jax.numpy as jnp
from flax import nnx

from bagpiper_jax.config import ModelConfig, RuntimeConfig
from bagpiper_jax.model.attention import Attention
from bagpiper_jax.model.kv_cache import KVCache
from bagpiper_jax.model.mlp import MLP
from bagpiper_jax.model.norm import RMSNorm
from bagpiper_jax.sharding import Rules, constrain

HIDDEN_AXES = ("activation_batch", "activation_length", "activation_embed")

_policies = jax.checkpoint_policies
# What the backward pass keeps from each layer's forward (the rest is recomputed); names are
# the ``checkpoint_name`` s of :mod:`bagpiper_jax.model.attention`.
REMAT_POLICIES = {
    "dots": _policies.dots_with_no_batch_dims_saveable,  # every projection's output
    "dots_attention": _policies.save_from_both_policies(  # ... and the attention kernel's output
        _policies.dots_with_no_batch_dims_saveable, _policies.save_only_these_names("attention_out")
    ),
    "qkv_attention": _policies.save_only_these_names("query", "key", "value", "attention_out"),  # MLP recomputed
    "full": _policies.nothing_saveable,
}


class Block(nnx.Module):
    """``x + attn(norm(x))`` then ``x + mlp(norm(x))`` on ``x [batch, frames, hidden]``."""

    def __init__(self, cfg: ModelConfig, runtime: RuntimeConfig, rules: Rules, *, rngs: nnx.Rngs):
        self.attn_norm = RMSNorm(cfg.hidden, cfg.rms_eps, param_dtype=runtime.param_dtype)
        self.attn = Attention(cfg, runtime, rules, rngs=rngs)
        self.mlp_norm = RMSNorm(cfg.hidden, cfg.rms_eps, param_dtype=runtime.param_dtype)
        self.mlp = MLP(cfg, runtime, rules, rngs=rngs)
        self.rules = rules

    def __call__(self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array) -> jax.Array:
        return self.feed_forward(x + self.attn(self.attn_norm(x), positions, segment_ids))

    def extend(
        self,
        x: jax.Array,
        positions: jax.Array,
        mask: jax.Array,
        cache_k: jax.Array,
        cache_v: jax.Array,
        start: jax.Array,
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """The block over cached frames (see :meth:`Attention.extend`); returns ``(x, k, v)``."""
        out, k, v = self.attn.extend(self.attn_norm(x), positions, mask, cache_k, cache_v, start)
        return self.feed_forward(x + out), k, v

    def feed_forward(self, x: jax.Array) -> jax.Array:
        x = x + self.mlp(self.mlp_norm(x))
        return constrain(x, HIDDEN_AXES, self.rules)


class Decoder(nnx.Module):
    """``cfg.layers`` blocks whose parameters carry a leading "layers" axis.

    The forward pass is one ``lax.scan`` over that axis (compile time independent of
    depth; ``runtime.scan_layers=false`` unrolls it, e.g. for XLA's cost analysis, which
    counts a loop body once), each step rematerialised per ``runtime.remat`` (see
    ``REMAT_POLICIES``).
    """

    def __init__(self, cfg: ModelConfig, runtime: RuntimeConfig, rules: Rules, *, rngs: nnx.Rngs):
        @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make_blocks(key):
            return Block(cfg, runtime, rules, rngs=nnx.Rngs(params=key))

        self.blocks = make_blocks(jax.random.split(rngs.params(), cfg.layers))
        self.remat = runtime.remat
        self.scan_layers = runtime.scan_layers

    def __call__(self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array) -> jax.Array:
        graphdef, stacked = nnx.split(self.blocks)

        def step(h, layer_params):
            return nnx.merge(graphdef, layer_params)(h, positions, segment_ids), None

        if self.remat != "none":
            # Inside a scan XLA cannot merge the recomputation into the forward pass; unrolled it could.
            step = jax.checkpoint(step, policy=REMAT_POLICIES[self.remat], prevent_cse=not self.scan_layers)
        if self.scan_layers:
            x, _ = jax.lax.scan(step, x, stacked)
            return x
        for layer in range(jax.tree.leaves(stacked)[0].shape[0]):
            x, _ = step(x, jax.tree.map(operator.itemgetter(layer), stacked))
        return x

    def extend(
        self, x: jax.Array, positions: jax.Array, mask: jax.Array, cache: KVCache, start: jax.Array
    ) -> tuple[jax.Array, KVCache]:
        """Runs frames ``x [batch, frames, hidden]`` at cache slots ``start ...`` through every
        layer, attending over ``cache`` (``mask [batch, frames, slots]``), and stores their
        keys/values there. One scan over the layers carrying the cache, updated in place."""
        graphdef, stacked = nnx.split(self.blocks)

        def step(carry, layer):
            h, ck, cv = carry
            layer_params, index = layer
            h, k, v = nnx.merge(graphdef, layer_params).extend(h, positions, mask, ck[index], cv[index], start)
            ck = jax.lax.dynamic_update_slice(ck, k[None].astype(ck.dtype), (index, 0, start, 0, 0))
            cv = jax.lax.dynamic_update_slice(cv, v[None].astype(cv.dtype), (index, 0, start, 0, 0))
            return (h, ck, cv), None

        layers = cache.k.shape[0]
        (x, k, v), _ = jax.lax.scan(step, (x, cache.k, cache.v), (stacked, jnp.arange(layers)))
        return x, KVCache(k, v)
