"""HuBERT-base semantic model of XCodec (HF ``HubertModel``, post-LN, inference only).

Padded batches: the GroupNorm of the first feature-encoder conv takes its statistics
over each clip's valid frames only, the positional conv sees zeros past each clip's
frames, and attention ignores keys past them, so every valid frame equals the result of
running the clip alone. The feature-encoder convs have no padding, so their valid frames
never read past a clip's samples.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from bagpiper_jax.codec.config import HubertConfig
from bagpiper_jax.codec.layers import CHANNELS, IN, KERNEL, OUT, Conv1d, LayerNorm, Linear, conv1d, gelu, time_mask
from bagpiper_jax.sharding import param


class MaskedGroupNorm(nnx.Module):
    """``GroupNorm(num_groups=channels)`` (per-channel statistics over time) restricted to
    each clip's first ``lengths`` frames: ``[B, T, C] -> [B, T, C]``."""

    def __init__(self, channels: int, eps: float = 1e-5):
        self.eps = eps
        self.weight = param(jnp.ones((channels,)), (CHANNELS,))
        self.bias = param(jnp.zeros((channels,)), (CHANNELS,))

    def __call__(self, x: jax.Array, lengths: jax.Array) -> jax.Array:
        valid = (jnp.arange(x.shape[1])[None, :] < lengths[:, None])[..., None]
        count = lengths.astype(x.dtype)[:, None, None]
        mean = jnp.where(valid, x, 0).sum(1, keepdims=True) / count
        var = jnp.where(valid, jnp.square(x - mean), 0).sum(1, keepdims=True) / count
        return self.normalize(x, (mean, var))

    def normalize(self, x: jax.Array, stats: tuple[jax.Array, jax.Array]) -> jax.Array:
        """``x`` normalised with given per-channel statistics ``(mean, var)`` (``[B, 1, C]``
        each): the statistics of a whole clip applied to one window of it."""
        mean, var = stats
        return (x - mean) * jax.lax.rsqrt(var + self.eps) * self.weight[...] + self.bias[...]


class FeatureConvLayer(nnx.Module):
    """One feature-encoder conv (+ masked GroupNorm on the first) + GELU."""

    def __init__(self, cfg: HubertConfig, layer_id: int, *, rngs: nnx.Rngs):
        in_dim = cfg.conv_dim[layer_id - 1] if layer_id > 0 else 1
        self.conv = Conv1d(
            in_dim,
            cfg.conv_dim[layer_id],
            cfg.conv_kernel[layer_id],
            stride=cfg.conv_stride[layer_id],
            bias=cfg.conv_bias,
            rngs=rngs,
        )
        self.layer_norm = MaskedGroupNorm(cfg.conv_dim[layer_id]) if layer_id == 0 else None

    def __call__(self, x: jax.Array, lengths: jax.Array, norm_stats=None) -> tuple[jax.Array, jax.Array]:
        x, lengths = self.conv(x), self.conv.out_length(lengths)
        if self.layer_norm is not None:
            x = self.layer_norm(x, lengths) if norm_stats is None else self.layer_norm.normalize(x, norm_stats)
        return gelu(x), lengths


class FeatureEncoder(nnx.Module):
    """HuBERT's 7-layer conv feature encoder (GroupNorm on the first layer), padding-aware."""

    def __init__(self, cfg: HubertConfig, *, rngs: nnx.Rngs):
        self.conv_layers = nnx.List([FeatureConvLayer(cfg, i, rngs=rngs) for i in range(len(cfg.conv_dim))])

    def __call__(self, wav: jax.Array, lengths: jax.Array, norm_stats=None) -> tuple[jax.Array, jax.Array]:
        """``wav [B, samples]`` -> features ``[B, frames, conv_dim[-1]]`` and frame lengths.
        ``norm_stats``: the first layer's GroupNorm ``(mean, var)`` to use instead of the
        statistics of ``wav`` (a window of a longer clip)."""
        x = wav[..., None]
        for layer in self.conv_layers:
            x, lengths = layer(x, lengths, norm_stats)
        return x, lengths


class FeatureProjection(nnx.Module):
    """LayerNorm then Linear ``conv_dim[-1] -> hidden_size``."""

    def __init__(self, cfg: HubertConfig, *, rngs: nnx.Rngs):
        self.layer_norm = LayerNorm(cfg.conv_dim[-1], cfg.layer_norm_eps) if cfg.feat_proj_layer_norm else None
        self.projection = Linear(cfg.conv_dim[-1], cfg.hidden_size, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.projection(x if self.layer_norm is None else self.layer_norm(x))


class WeightNormConv1d(nnx.Module):
    """The positional conv (``padding = kernel // 2``, grouped): ``weight = weight_g * weight_v
    / ||weight_v||`` with the norm over (out, in) taken separately for each kernel tap
    (PyTorch ``weight_norm(dim=2)``).

    ``weight_g [1, 1, kernel]`` and ``weight_v [out, in/groups, kernel]`` are the stored
    parameters (HF ``parametrizations.weight.original0/1`` or legacy ``weight_g/weight_v``).
    """

    def __init__(self, channels: int, kernel_size: int, groups: int, *, rngs: nnx.Rngs):
        self.groups, self.padding = groups, kernel_size // 2
        self.weight_g = param(jnp.ones((1, 1, kernel_size)), (None, None, KERNEL))
        self.weight_v = param(
            0.02 * jax.random.normal(rngs.params(), (channels, channels // groups, kernel_size)), (OUT, IN, KERNEL)
        )
        self.bias = param(jnp.zeros((channels,)), (OUT,))

    def __call__(self, x: jax.Array, lengths: jax.Array) -> jax.Array:
        v = self.weight_v[...]
        weight = self.weight_g[...] * v / jnp.sqrt(jnp.square(v).sum(axis=(0, 1), keepdims=True))
        return conv1d(x, weight, self.bias[...], lengths, padding=self.padding, groups=self.groups)


class PositionalConvEmbedding(nnx.Module):
    """The weight-normed grouped positional conv (the last frame of the even kernel dropped), GELU."""

    def __init__(self, cfg: HubertConfig, *, rngs: nnx.Rngs):
        self.conv = WeightNormConv1d(
            cfg.hidden_size, cfg.num_conv_pos_embeddings, cfg.num_conv_pos_embedding_groups, rngs=rngs
        )
        self.num_pad_remove = 1 if cfg.num_conv_pos_embeddings % 2 == 0 else 0

    def __call__(self, x: jax.Array, lengths: jax.Array) -> jax.Array:
        y = self.conv(x, lengths)
        return gelu(y[:, : y.shape[1] - self.num_pad_remove])


class Attention(nnx.Module):
    """HuBERT multi-head self-attention (biases, scaled queries), masked past each clip."""

    def __init__(self, cfg: HubertConfig, *, rngs: nnx.Rngs):
        h = cfg.hidden_size
        self.num_heads = cfg.num_attention_heads
        self.q_proj, self.k_proj = Linear(h, h, rngs=rngs), Linear(h, h, rngs=rngs)
        self.v_proj, self.out_proj = Linear(h, h, rngs=rngs), Linear(h, h, rngs=rngs)

    def _heads(self, y: jax.Array) -> jax.Array:
        return y.reshape(*y.shape[:2], self.num_heads, y.shape[-1] // self.num_heads)

    def keys_values(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Keys and values ``[B, T, heads, head_dim]`` of the frames ``x [B, T, H]``."""
        return self._heads(self.k_proj(x)), self._heads(self.v_proj(x))

    def __call__(self, x: jax.Array, lengths: jax.Array, keys_values=None) -> jax.Array:
        """Bidirectional attention over each clip's first ``lengths`` frames: ``[B, T, H]``.
        ``keys_values``: those of the frames attended to (default: ``x``'s); with them, ``x``
        may be a block of query frames ``[B, Q, H]``."""
        k, v = self.keys_values(x) if keys_values is None else keys_values
        out = jax.nn.dot_product_attention(
            self._heads(self.q_proj(x)), k, v, key_value_seq_lengths=lengths.astype(jnp.int32)
        )
        return self.out_proj(out.reshape(x.shape))


class FeedForward(nnx.Module):
    """Linear -> exact GELU -> Linear."""

    def __init__(self, cfg: HubertConfig, *, rngs: nnx.Rngs):
        self.intermediate_dense = Linear(cfg.hidden_size, cfg.intermediate_size, rngs=rngs)
        self.output_dense = Linear(cfg.intermediate_size, cfg.hidden_size, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.output_dense(gelu(self.intermediate_dense(x)))


class EncoderLayer(nnx.Module):
    """Post-LN transformer layer: ``LN(x + attn(x))``, then ``LN(y + ffn(y))``."""

    def __init__(self, cfg: HubertConfig, *, rngs: nnx.Rngs):
        self.attention = Attention(cfg, rngs=rngs)
        self.layer_norm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps)
        self.feed_forward = FeedForward(cfg, rngs=rngs)
        self.final_layer_norm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps)

    def __call__(self, x: jax.Array, lengths: jax.Array, query_block: int = 0) -> jax.Array:
        """``[B, T, H] -> [B, T, H]``. ``query_block > 0`` computes the layer for that many
        query frames at a time (``T`` a multiple of it) against all keys: memory linear in
        ``T``, the same values."""
        if not query_block or query_block >= x.shape[1]:
            return self._rows(x, lengths, None)
        keys_values = self.attention.keys_values(x)

        def block(i, x):  # block i reads only its own rows of x (keys and values are made): in place
            rows = self._rows(jax.lax.dynamic_slice_in_dim(x, i * query_block, query_block, 1), lengths, keys_values)
            return jax.lax.dynamic_update_slice_in_dim(x, rows, i * query_block, 1)

        return jax.lax.fori_loop(0, x.shape[1] // query_block, block, x)

    def _rows(self, x: jax.Array, lengths: jax.Array, keys_values) -> jax.Array:
        x = self.layer_norm(x + self.attention(x, lengths, keys_values))
        return self.final_layer_norm(x + self.feed_forward(x))


class Encoder(nnx.Module):
    """Positional conv, LayerNorm (post-LN encoder input), then the stacked layers."""

    def __init__(self, cfg: HubertConfig, *, rngs: nnx.Rngs):
        self.pos_conv_embed = PositionalConvEmbedding(cfg, rngs=rngs)
        self.layer_norm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps)
        self.layers = nnx.List([EncoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_hidden_layers)])

    def __call__(self, x: jax.Array, lengths: jax.Array) -> jax.Array:
        """The mean ``[B, T, H]`` of the ``num_hidden_layers + 1`` hidden states (the post-LN
        encoder input, then each layer's output; HF ``output_hidden_states``): XCodec's
        semantic features, summed as they come (one state held at a time)."""
        x = self.embed(x, lengths)
        total = x
        for layer in self.layers:
            x = layer(x, lengths)
            total = total + x
        return self.mean(total)

    def embed(self, x: jax.Array, lengths: jax.Array) -> jax.Array:
        """The first hidden state: projected features plus the positional conv, LayerNorm."""
        return self.layer_norm(x + self.pos_conv_embed(x, lengths))

    def mean(self, total: jax.Array) -> jax.Array:
        """The sum of all hidden states -> their mean."""
        return total / (len(self.layers) + 1)


class HubertModel(nnx.Module):
    """HF ``HubertModel`` in eval mode. ``masked_spec_embed`` (SpecAugment's training-time
    mask vector) is kept only so checkpoints round-trip; inference never uses it."""

    def __init__(self, cfg: HubertConfig, *, rngs: nnx.Rngs):
        self.feature_extractor = FeatureEncoder(cfg, rngs=rngs)
        self.feature_projection = FeatureProjection(cfg, rngs=rngs)
        self.encoder = Encoder(cfg, rngs=rngs)
        self.masked_spec_embed = param(jax.random.uniform(rngs.params(), (cfg.hidden_size,)), (CHANNELS,))

    def __call__(self, wav: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Mean of all hidden states ``[B, frames, hidden]`` (XCodec's semantic features)
        and the frame counts ``[B]``."""
        features, frames = self.feature_extractor(time_mask(wav, lengths), lengths)
        return self.encoder(self.feature_projection(features), frames), frames
