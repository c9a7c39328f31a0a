"""Shared building blocks of the codec, in channel-last layout ``[batch, time, channels]``.

Parameters keep the PyTorch layouts (conv ``weight`` [out, in/groups, kernel], linear
``weight`` [out, in], transposed conv ``weight`` [in, out, kernel]) and PyTorch names, so
the HF checkpoint maps onto the module tree key for key (see ``hf_import``).

Padded batches: every convolution that mixes time steps (kernel > 1) takes the true
``lengths`` of its input and zeroes the frames at or beyond them first. Those zeros are
exactly the zero padding the convolution would have seen on an unpadded clip, so the
first ``out_length(lengths)`` output frames of a padded clip equal the unpadded result.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from bagpiper_jax.sharding import param

# Logical axis names of codec parameters. None of them is in the mesh rules table, so the
# (frozen, 161M-parameter) codec is replicated and only the batch is sharded.
OUT, IN, KERNEL, CHANNELS = "codec_out", "codec_in", "codec_kernel", "codec_channels"


def time_mask(x: jax.Array, lengths: jax.Array) -> jax.Array:
    """Zeroes ``x [batch, time, ...]`` at time steps ``>= lengths [batch]``."""
    valid = jnp.arange(x.shape[1])[None, :] < lengths[:, None]
    return jnp.where(valid.reshape(valid.shape + (1,) * (x.ndim - 2)), x, jnp.zeros((), x.dtype))


def conv_out_length(lengths, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1):
    """PyTorch ``Conv1d`` output length (works on ints and integer arrays)."""
    return (lengths + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _normal(rngs: nnx.Rngs, shape, std: float = 0.02) -> jax.Array:
    return std * jax.random.normal(rngs.params(), shape, jnp.float32)


def conv1d(
    x: jax.Array,
    weight: jax.Array,
    bias: jax.Array | None,
    lengths: jax.Array | None = None,
    *,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
    groups: int = 1,
) -> jax.Array:
    """PyTorch ``Conv1d`` on ``x [B, T, in]`` with ``weight [out, in/groups, kernel]``; when
    ``lengths`` is given and the kernel mixes time steps, frames past them are zeroed first."""
    if lengths is not None and weight.shape[-1] > 1:
        x = time_mask(x, lengths)
    y = jax.lax.conv_general_dilated(
        x,
        weight.astype(x.dtype),
        window_strides=(stride,),
        padding=[(padding, padding)],
        rhs_dilation=(dilation,),
        dimension_numbers=("NWC", "OIW", "NWC"),
        feature_group_count=groups,
    )
    return y if bias is None else y + bias.astype(x.dtype)


class Conv1d(nnx.Module):
    """PyTorch ``Conv1d`` (zero padding, dilation): ``[B, T, in] -> [B, T', out]``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        rngs: nnx.Rngs,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        bias: bool = True,
    ):
        self.kernel_size, self.stride, self.padding, self.dilation = kernel_size, stride, padding, dilation
        self.weight = param(_normal(rngs, (out_channels, in_channels, kernel_size)), (OUT, IN, KERNEL))
        self.bias = param(jnp.zeros((out_channels,)), (OUT,)) if bias else None

    def out_length(self, lengths):
        return conv_out_length(lengths, self.kernel_size, self.stride, self.padding, self.dilation)

    def __call__(self, x: jax.Array, lengths: jax.Array | None = None) -> jax.Array:
        return conv1d(
            x,
            self.weight[...],
            None if self.bias is None else self.bias[...],
            lengths,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
        )


class ConvTranspose1d(nnx.Module):
    """PyTorch ``ConvTranspose1d`` with ``output_padding``: ``[B, L, in] -> [B, L', out]``,
    ``L' = (L - 1) * stride - 2 * padding + kernel + output_padding``.

    Computed polyphase (no zero-stuffing): the ``stride`` output phases are one ordinary
    convolution with ``ceil(kernel / stride)`` taps and ``stride * out`` channels, whose
    outputs are interleaved in time. Output sample ``t`` gathers input ``i`` with tap
    ``k = t + padding - i * stride``, exactly as PyTorch defines it.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        padding: int,
        output_padding: int,
        *,
        rngs: nnx.Rngs,
    ):
        self.kernel_size, self.stride, self.padding, self.output_padding = kernel_size, stride, padding, output_padding
        self.weight = param(_normal(rngs, (in_channels, out_channels, kernel_size)), (IN, OUT, KERNEL))
        self.bias = param(jnp.zeros((out_channels,)), (OUT,))

    def out_length(self, lengths):
        return (lengths - 1) * self.stride - 2 * self.padding + self.kernel_size + self.output_padding

    def __call__(self, x: jax.Array, lengths: jax.Array | None = None) -> jax.Array:
        if lengths is not None:
            x = time_mask(x, lengths)
        s, k, p = self.stride, self.kernel_size, self.padding
        taps = -(-k // s)
        w = self.weight[...].astype(x.dtype)
        c_in, c_out, _ = w.shape
        # w_poly[tap, in, phase, out] = w[in, out, phase + (taps - 1 - tap) * s] (0 past the kernel):
        # tap j of the VALID conv below reads x[m - (taps - 1 - j)] for output block m.
        w = jnp.pad(w, ((0, 0), (0, 0), (0, taps * s - k))).reshape(c_in, c_out, taps, s)
        w_poly = jnp.flip(w, axis=2).transpose(2, 0, 3, 1).reshape(taps, c_in, s * c_out)
        length = x.shape[1]
        out_len = self.out_length(length)
        blocks = -(-(p + out_len) // s)
        x = jnp.pad(x, ((0, 0), (taps - 1, blocks - length), (0, 0)))
        z = jax.lax.conv_general_dilated(
            x, w_poly, window_strides=(1,), padding="VALID", dimension_numbers=("NWC", "WIO", "NWC")
        )
        z = z.reshape(z.shape[0], blocks * s, c_out)[:, p : p + out_len]
        return z + self.bias[...].astype(x.dtype)


class Linear(nnx.Module):
    """PyTorch ``Linear``: ``[..., in] -> [..., out]`` with ``weight [out, in]``."""

    def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs, bias: bool = True):
        self.weight = param(_normal(rngs, (out_features, in_features)), (OUT, IN))
        self.bias = param(jnp.zeros((out_features,)), (OUT,)) if bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.einsum("...i,oi->...o", x, self.weight[...].astype(x.dtype))
        return y if self.bias is None else y + self.bias[...].astype(x.dtype)


class LayerNorm(nnx.Module):
    """PyTorch ``LayerNorm`` over the last axis (biased variance, ``eps`` inside the sqrt)."""

    def __init__(self, features: int, eps: float = 1e-5):
        self.eps = eps
        self.weight = param(jnp.ones((features,)), (CHANNELS,))
        self.bias = param(jnp.zeros((features,)), (CHANNELS,))

    def __call__(self, x: jax.Array) -> jax.Array:
        mean = x.mean(-1, keepdims=True)
        var = jnp.square(x - mean).mean(-1, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + self.eps) * self.weight[...] + self.bias[...]


def gelu(x: jax.Array) -> jax.Array:
    """Exact (erf) GELU, as PyTorch's default ``nn.GELU`` / HF ``"gelu"``."""
    return jax.nn.gelu(x, approximate=False)
