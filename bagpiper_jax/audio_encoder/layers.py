"""Building blocks of the audio tower (Flax NNX), every parameter logically annotated.

Numerics follow PyTorch: LayerNorm eps 1e-5, exact-erf GELU, softmax in float32.
``dtype`` is the compute dtype; parameters are cast to it at use.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from bagpiper_jax.audio_encoder.config import AudioEncoderConfig
from bagpiper_jax.sharding import param

LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm default
INIT_STD = 0.02  # HF initializer_range


def gelu(x: jax.Array) -> jax.Array:
    """Exact (erf) GELU, as torch ``F.gelu`` / HF ``"gelu"``."""
    return jax.nn.gelu(x, approximate=False)


class Dense(nnx.Module):
    """``y = x · kernel + bias`` contracting the trailing ``len(in_shape)`` axes of ``x``.

    kernel ``[*in_shape, *out_shape]``, bias ``out_shape``; multi-axis shapes let attention
    projections keep a heads axis (e.g. ``[d_model] → [heads, head_dim]``).
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        out_shape: Sequence[int],
        in_axes: Sequence[str | None],
        out_axes: Sequence[str | None],
        *,
        use_bias: bool = True,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.in_rank = len(in_shape)
        self.dtype = dtype
        kernel = INIT_STD * jax.random.normal(rngs.params(), (*in_shape, *out_shape), param_dtype)
        self.kernel = param(kernel, (*in_axes, *out_axes))
        self.bias = param(jnp.zeros(tuple(out_shape), param_dtype), tuple(out_axes)) if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.tensordot(x.astype(self.dtype), self.kernel[...].astype(self.dtype), axes=self.in_rank)
        return y if self.bias is None else y + self.bias[...].astype(self.dtype)


class LayerNorm(nnx.Module):
    """LayerNorm over the last axis (statistics in float32), scale and bias ``[dim]``."""

    def __init__(self, dim: int, *, dtype=jnp.float32, param_dtype=jnp.float32):
        self.dtype = dtype
        self.scale = param(jnp.ones((dim,), param_dtype), ("norm",))
        self.bias = param(jnp.zeros((dim,), param_dtype), ("norm",))

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(jnp.float32)
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        y = (x - mean) * jax.lax.rsqrt(var + LAYER_NORM_EPS)
        return (y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)).astype(self.dtype)


class Conv3x3Stride2(nnx.Module):
    """Conv2d(kernel 3×3, stride 2, padding 1) on ``[n, time, freq, channels]`` (NHWC).

    kernel ``[3 (time), 3 (freq), in, out]``, bias ``[out]``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs
    ):
        self.dtype = dtype
        kernel = INIT_STD * jax.random.normal(rngs.params(), (3, 3, in_channels, out_channels), param_dtype)
        self.kernel = param(kernel, (None, None, "conv_in", "conv_out"))
        self.bias = param(jnp.zeros((out_channels,), param_dtype), ("conv_out",))

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype),
            self.kernel[...].astype(self.dtype),
            window_strides=(2, 2),
            padding=((1, 1), (1, 1)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        return y + self.bias[...].astype(self.dtype)


class EncoderLayer(nnx.Module):
    """Pre-LN transformer layer with bidirectional attention inside fixed windows.

    Input ``x [batch, tokens, d_model]`` with ``token_lengths [batch]``: token ``t`` of a
    row attends to the valid tokens (``< token_lengths``) of its window ``t // window``.
    Only the attention itself is padded to whole windows.
    """

    def __init__(self, config: AudioEncoderConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        d, heads, head_dim, ffn = (
            config.d_model,
            config.encoder_attention_heads,
            config.head_dim,
            config.encoder_ffn_dim,
        )
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.window = config.window_tokens
        self.self_attn_layer_norm = LayerNorm(d, dtype=dtype, param_dtype=param_dtype)
        self.q_proj = Dense((d,), (heads, head_dim), ("embed",), ("q_heads", "head_dim"), **kw)
        self.k_proj = Dense((d,), (heads, head_dim), ("embed",), ("q_heads", "head_dim"), **kw)
        self.v_proj = Dense((d,), (heads, head_dim), ("embed",), ("q_heads", "head_dim"), **kw)
        self.out_proj = Dense((heads, head_dim), (d,), ("q_heads", "head_dim"), ("embed",), **kw)
        self.final_layer_norm = LayerNorm(d, dtype=dtype, param_dtype=param_dtype)
        self.fc1 = Dense((d,), (ffn,), ("embed",), ("mlp",), **kw)
        self.fc2 = Dense((ffn,), (d,), ("mlp",), ("embed",), **kw)
        self.scale = 1.0 / math.sqrt(head_dim)

    def attention(self, x: jax.Array, token_lengths: jax.Array) -> jax.Array:
        batch, tokens, _ = x.shape
        windows = -(-tokens // self.window)

        def to_windows(t):  # [batch, tokens, heads, head_dim] -> [batch * windows, window, heads, head_dim]
            t = jnp.pad(t, ((0, 0), (0, windows * self.window - tokens), (0, 0), (0, 0)))
            return t.reshape(batch * windows, self.window, *t.shape[2:])

        q, k, v = (to_windows(proj(x)) for proj in (self.q_proj, self.k_proj, self.v_proj))
        key_valid = jnp.arange(windows * self.window)[None, :] < token_lengths[:, None]
        key_valid = key_valid.reshape(batch * windows, 1, 1, self.window)
        logits = jnp.einsum("wqhd,wkhd->whqk", q, k).astype(jnp.float32) * self.scale
        # A finite floor keeps fully padded windows NaN-free (their outputs are discarded).
        logits = jnp.where(key_valid, logits, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        out = jnp.einsum("whqk,wkhd->wqhd", probs, v).reshape(batch, windows * self.window, *q.shape[2:])
        return self.out_proj(out[:, :tokens])

    def __call__(self, x: jax.Array, token_lengths: jax.Array) -> jax.Array:
        x = x + self.attention(self.self_attn_layer_norm(x), token_lengths)
        return x + self.fc2(gelu(self.fc1(self.final_layer_norm(x))))
