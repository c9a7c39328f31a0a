"""DAC acoustic encoder and decoder as used by XCodec (HF ``DacEncoder`` / ``DacDecoder``
with XCodec's adjustments: transposed convs use ``output_padding = stride % 2`` and the
decoder has no final tanh). Activations are ``[batch, time, channels]``.

Every call takes the valid ``lengths [batch]`` of its input and returns the valid lengths
of its output, so clips padded to a common length give the same valid frames as alone.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from bagpiper_jax.codec.config import DacConfig
from bagpiper_jax.codec.layers import CHANNELS, Conv1d, ConvTranspose1d
from bagpiper_jax.sharding import param


class Snake1d(nnx.Module):
    """``x + sin(alpha x)^2 / (alpha + 1e-9)`` per channel; ``alpha [1, C, 1]`` as stored by HF."""

    def __init__(self, channels: int):
        self.alpha = param(jnp.ones((1, channels, 1)), (None, CHANNELS, None))

    def __call__(self, x: jax.Array) -> jax.Array:
        alpha = self.alpha[...].reshape(-1).astype(x.dtype)
        return x + jnp.reciprocal(alpha + 1e-9) * jnp.square(jnp.sin(alpha * x))


class ResidualUnit(nnx.Module):
    """``x + conv2(snake(conv1(snake(x))))``, conv1 kernel 7 dilated, length-preserving."""

    def __init__(self, channels: int, dilation: int, *, rngs: nnx.Rngs):
        self.snake1 = Snake1d(channels)
        self.conv1 = Conv1d(channels, channels, 7, dilation=dilation, padding=3 * dilation, rngs=rngs)
        self.snake2 = Snake1d(channels)
        self.conv2 = Conv1d(channels, channels, 1, rngs=rngs)

    def __call__(self, x: jax.Array, lengths: jax.Array) -> jax.Array:
        return x + self.conv2(self.snake2(self.conv1(self.snake1(x), lengths)))


class EncoderBlock(nnx.Module):
    """Three residual units (dilations 1, 3, 9), Snake, strided conv doubling the channels."""

    def __init__(self, channels: int, stride: int, *, rngs: nnx.Rngs):
        self.res_unit1 = ResidualUnit(channels, 1, rngs=rngs)
        self.res_unit2 = ResidualUnit(channels, 3, rngs=rngs)
        self.res_unit3 = ResidualUnit(channels, 9, rngs=rngs)
        self.snake1 = Snake1d(channels)
        self.conv1 = Conv1d(channels, 2 * channels, 2 * stride, stride=stride, padding=math.ceil(stride / 2), rngs=rngs)

    def __call__(self, x: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
        for unit in (self.res_unit1, self.res_unit2, self.res_unit3):
            x = unit(x, lengths)
        return self.conv1(self.snake1(x), lengths), self.conv1.out_length(lengths)


class DacEncoder(nnx.Module):
    """DAC acoustic encoder: conv, strided blocks of residual units with Snake, conv to ``hidden_size``."""

    def __init__(self, cfg: DacConfig, *, rngs: nnx.Rngs):
        width = cfg.encoder_hidden_size
        self.conv1 = Conv1d(1, width, 7, padding=3, rngs=rngs)
        self.block = nnx.List([EncoderBlock(width * 2**i, s, rngs=rngs) for i, s in enumerate(cfg.downsampling_ratios)])
        width *= 2 ** len(cfg.downsampling_ratios)
        self.snake1 = Snake1d(width)
        self.conv2 = Conv1d(width, cfg.hidden_size, 3, padding=1, rngs=rngs)

    def out_length(self, lengths):
        """Frames produced from ``lengths`` samples (ints or integer arrays)."""
        for block in self.block:
            lengths = block.conv1.out_length(lengths)
        return lengths

    def __call__(self, wav: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``wav [B, samples]`` -> latents ``[B, frames, hidden_size]`` and frame lengths ``[B]``."""
        x = self.conv1(wav[..., None], lengths)
        for block in self.block:
            x, lengths = block(x, lengths)
        return self.conv2(self.snake1(x), lengths), lengths


class DecoderBlock(nnx.Module):
    """Snake, transposed conv (upsample by ``stride``, halve channels), three residual units."""

    def __init__(self, channels: int, stride: int, *, rngs: nnx.Rngs):
        self.snake1 = Snake1d(channels)
        self.conv_t1 = ConvTranspose1d(
            channels, channels // 2, 2 * stride, stride, math.ceil(stride / 2), stride % 2, rngs=rngs
        )
        self.res_unit1 = ResidualUnit(channels // 2, 1, rngs=rngs)
        self.res_unit2 = ResidualUnit(channels // 2, 3, rngs=rngs)
        self.res_unit3 = ResidualUnit(channels // 2, 9, rngs=rngs)

    def __call__(self, x: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
        x, lengths = self.conv_t1(self.snake1(x), lengths), self.conv_t1.out_length(lengths)
        for unit in (self.res_unit1, self.res_unit2, self.res_unit3):
            x = unit(x, lengths)
        return x, lengths


class DacDecoder(nnx.Module):
    """DAC decoder: conv, transposed-conv blocks of residual units, conv to one channel (no tanh)."""

    def __init__(self, cfg: DacConfig, *, rngs: nnx.Rngs):
        width = cfg.decoder_hidden_size
        self.conv1 = Conv1d(cfg.hidden_size, width, 7, padding=3, rngs=rngs)
        self.block = nnx.List([DecoderBlock(width // 2**i, s, rngs=rngs) for i, s in enumerate(cfg.upsampling_ratios)])
        width //= 2 ** len(cfg.upsampling_ratios)
        self.snake1 = Snake1d(width)
        self.conv2 = Conv1d(width, 1, 7, padding=3, rngs=rngs)

    def __call__(self, x: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Latents ``[B, frames, hidden_size]`` -> audio ``[B, frames * hop]`` and sample lengths."""
        x = self.conv1(x, lengths)
        for block in self.block:
            x, lengths = block(x, lengths)
        return self.conv2(self.snake1(x), lengths)[..., 0], lengths
