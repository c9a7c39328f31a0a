"""XCodec's residual vector quantizer: for each quantizer, the nearest codebook entry by
squared Euclidean distance, subtract, repeat (no in/out projections).

Codebooks are ``Buffer`` variables, not ``nnx.Param``: HF stores them as buffers (they are
EMA-updated during XCodec training, never trained by gradient), so the parameter count
matches HF's (160,698,625 at the default config). ``embed_avg``, ``cluster_size`` and
``inited`` are that EMA's state; they are kept only so checkpoints round-trip exactly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from bagpiper_jax.codec.config import XCodecConfig

CODEBOOK, CODEBOOK_DIM = "codec_codebook", "codec_codebook_dim"


class Buffer(nnx.Variable):
    """Non-trainable model state (an HF buffer), sharded by logical axes like a Param."""


def buffer(value: jax.Array, axes) -> Buffer:
    if len(axes) != value.ndim:
        raise ValueError(f"logical axes {tuple(axes)} do not match a buffer of shape {value.shape}")
    return Buffer(value, out_sharding=tuple(axes), eager_sharding=False)


class EuclideanCodebook(nnx.Module):
    """One codebook ``[codebook_size, dim]`` (a frozen buffer): nearest-entry lookup and back."""

    def __init__(self, cfg: XCodecConfig, *, rngs: nnx.Rngs):
        shape = (cfg.codebook_size, cfg.codebook_dim)
        self.embed = buffer(jax.random.normal(rngs.params(), shape), (CODEBOOK, CODEBOOK_DIM))
        self.embed_avg = buffer(jnp.zeros(shape), (CODEBOOK, CODEBOOK_DIM))
        self.cluster_size = buffer(jnp.zeros((cfg.codebook_size,)), (CODEBOOK,))
        self.inited = buffer(jnp.ones((1,)), (None,))

    def encode(self, x: jax.Array) -> jax.Array:
        """``[..., dim]`` -> nearest entry ``[...]`` (int32), by HF's expanded distance
        ``|x|^2 - 2 x.e + |e|^2`` (first index on exact ties)."""
        embed = self.embed[...]
        dist = (
            jnp.square(x).sum(-1, keepdims=True) - 2 * jnp.einsum("...d,kd->...k", x, embed) + jnp.square(embed).sum(-1)
        )
        return jnp.argmin(dist, axis=-1).astype(jnp.int32)

    def decode(self, codes: jax.Array) -> jax.Array:
        """``[...]`` -> codebook vectors ``[..., dim]``."""
        return jnp.take(self.embed[...], codes, axis=0)


class VectorQuantization(nnx.Module):
    """One quantizer of the residual VQ (holds its codebook)."""

    def __init__(self, cfg: XCodecConfig, *, rngs: nnx.Rngs):
        self.codebook = EuclideanCodebook(cfg, rngs=rngs)


class ResidualVectorQuantizer(nnx.Module):
    """Residual VQ: each quantizer codes what the previous ones left; decoding sums the entries."""

    def __init__(self, cfg: XCodecConfig, *, rngs: nnx.Rngs):
        self.quantizers = nnx.List([VectorQuantization(cfg, rngs=rngs) for _ in range(cfg.num_quantizers)])

    def encode(self, x: jax.Array, num_quantizers: int) -> jax.Array:
        """Latents ``[B, T, dim]`` -> codes ``[B, T, num_quantizers]`` (int32)."""
        codes = []
        for q in self.quantizers[:num_quantizers]:
            c = q.codebook.encode(x)
            x = x - q.codebook.decode(c)
            codes.append(c)
        return jnp.stack(codes, -1)

    def decode(self, codes: jax.Array) -> jax.Array:
        """Codes ``[B, T, n]`` (any ``n`` up to the number of quantizers) -> ``[B, T, dim]``,
        the sum of the selected codebook vectors."""
        return sum(self.quantizers[i].codebook.decode(codes[..., i]) for i in range(codes.shape[-1]))
