"""XCodec's semantic encoder (HuBERT features -> latent) and semantic decoder (quantized
latent -> HuBERT features, XCodec's training target). Activations ``[batch, frames, ch]``;
strides are always 1 (see ``XCodecConfig``), so frame lengths never change here."""

from __future__ import annotations

import jax
from flax import nnx

from bagpiper_jax.codec.config import XCodecConfig
from bagpiper_jax.codec.layers import Conv1d


class ResidualUnit(nnx.Module):
    """``x + conv2(elu(conv1(elu(x))))``: conv1 dilated (bias-free), conv2 kernel 1 (bias-free)."""

    def __init__(self, cfg: XCodecConfig, channels: int, dilation: int, *, rngs: nnx.Rngs):
        k = cfg.unit_kernel_size
        self.conv1 = Conv1d(
            channels, channels, k, padding=(k - 1) // 2 * dilation, dilation=dilation, bias=False, rngs=rngs
        )
        self.conv2 = Conv1d(channels, channels, 1, bias=False, rngs=rngs)

    def __call__(self, x: jax.Array, lengths: jax.Array) -> jax.Array:
        return x + self.conv2(jax.nn.elu(self.conv1(jax.nn.elu(x), lengths)))


def _widths(cfg: XCodecConfig) -> list[int]:
    return [int(cfg.semantic.hidden_size * r) for r in cfg.channel_ratios]


class EncoderBlock(nnx.Module):
    """Residual units, then a conv (stride 1 in XCodec)."""

    def __init__(self, cfg: XCodecConfig, in_channels: int, out_channels: int, *, rngs: nnx.Rngs):
        self.res_units = nnx.List([ResidualUnit(cfg, in_channels, d, rngs=rngs) for d in cfg.block_dilations])
        self.conv = Conv1d(in_channels, out_channels, 3, padding=1, rngs=rngs)

    def __call__(self, x: jax.Array, lengths: jax.Array) -> jax.Array:
        for unit in self.res_units:
            x = unit(x, lengths)
        return self.conv(x, lengths)


class SemanticEncoder(nnx.Module):
    """XCodec's semantic encoder over HuBERT features: conv, then encoder blocks."""

    def __init__(self, cfg: XCodecConfig, *, rngs: nnx.Rngs):
        h, k = cfg.semantic.hidden_size, cfg.kernel_size
        self.conv = Conv1d(h, h, k, padding=k // 2, bias=False, rngs=rngs)
        widths = _widths(cfg)
        self.conv_blocks = nnx.List(
            [EncoderBlock(cfg, c_in, c_out, rngs=rngs) for c_in, c_out in zip([h] + widths[:-1], widths)]
        )

    def __call__(self, x: jax.Array, lengths: jax.Array) -> jax.Array:
        """``[B, T, hidden]`` -> ``[B, T, hidden * channel_ratios[-1]]``."""
        x = self.conv(x, lengths)
        for block in self.conv_blocks:
            x = block(x, lengths)
        return x


class DecoderBlock(nnx.Module):
    """A conv, then residual units (the mirror of :class:`EncoderBlock`)."""

    def __init__(self, cfg: XCodecConfig, in_channels: int, out_channels: int, *, rngs: nnx.Rngs):
        self.conv = Conv1d(in_channels, out_channels, 3, padding=1, rngs=rngs)
        self.res_units = nnx.List([ResidualUnit(cfg, out_channels, d, rngs=rngs) for d in cfg.block_dilations])

    def __call__(self, x: jax.Array, lengths: jax.Array) -> jax.Array:
        x = self.conv(x, lengths)
        for unit in self.res_units:
            x = unit(x, lengths)
        return x


class SemanticDecoder(nnx.Module):
    """XCodec's semantic decoder: codes back to HuBERT features (``XCodec.decode_semantic``)."""

    def __init__(self, cfg: XCodecConfig, *, rngs: nnx.Rngs):
        h, k = cfg.semantic.hidden_size, cfg.kernel_size
        widths = _widths(cfg)
        self.conv1 = Conv1d(h, widths[0], k, padding=k // 2, bias=False, rngs=rngs)
        self.conv_blocks = nnx.List(
            [DecoderBlock(cfg, c_in, c_out, rngs=rngs) for c_in, c_out in zip(widths, widths[1:] + [h])]
        )
        self.conv2 = Conv1d(h, h, k, padding=k // 2, bias=False, rngs=rngs)

    def __call__(self, x: jax.Array, lengths: jax.Array) -> jax.Array:
        """``[B, T, hidden]`` -> reconstructed HuBERT features ``[B, T, hidden]``."""
        x = self.conv1(x, lengths)
        for block in self.conv_blocks:
            x = block(x, lengths)
        return self.conv2(x, lengths)
