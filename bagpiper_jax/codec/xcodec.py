"""The XCodec model (HF ``XcodecModel``): HuBERT semantic path + DAC acoustic path, fused
and quantized by an RVQ; decoding sums codebook vectors and runs the DAC decoder.

``encode``/``decode`` work on padded batches with per-clip true lengths and are pure
functions of the module state, so they jit with static (bucketed) shapes; see
``bagpiper_jax.codec.tokenizer`` for the host-side batching, bucketing and sharding.

Each clip is encoded with exactly the semantics of HF ``XcodecModel.encode`` run on that
clip alone: no trimming (callers wanting the reference pipeline's trim to a multiple of
the hop pass ``wav[:len(wav) // hop * hop]``), and lengths that are not multiples of the
hop take HF's acoustic padding branch per clip. Padding is neutralised layer by layer: convolutions zero the
frames past each clip's valid length before mixing time steps, HuBERT's GroupNorm takes
statistics over valid frames only, and attention masks keys past the valid frames.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bagpiper_jax.codec.config import XCodecConfig
from bagpiper_jax.codec.dac import DacDecoder, DacEncoder
from bagpiper_jax.codec.hubert import HubertModel
from bagpiper_jax.codec.layers import Linear, time_mask
from bagpiper_jax.codec.rvq import ResidualVectorQuantizer
from bagpiper_jax.codec.semantic import SemanticDecoder, SemanticEncoder


class XCodec(nnx.Module):
    """Attribute names follow HF ``XcodecModel`` so parameter paths are HF keys."""

    def __init__(self, cfg: XCodecConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.acoustic_encoder = DacEncoder(cfg.acoustic, rngs=rngs)
        self.acoustic_decoder = DacDecoder(cfg.acoustic, rngs=rngs)
        self.encoder_semantic = SemanticEncoder(cfg, rngs=rngs)
        self.decoder_semantic = SemanticDecoder(cfg, rngs=rngs)
        self.semantic_model = HubertModel(cfg.semantic, rngs=rngs)
        d = cfg.codebook_dim
        self.fc = Linear(d, d, rngs=rngs)
        self.fc1 = Linear(d, cfg.semantic.hidden_size, rngs=rngs)
        self.fc2 = Linear(d, cfg.acoustic.hidden_size, rngs=rngs)
        self.quantizer = ResidualVectorQuantizer(cfg, rngs=rngs)

    @property
    def pad(self) -> int:
        return self.cfg.hop_length // 2

    def encode(self, wav: jax.Array, lengths: jax.Array, num_quantizers: int) -> tuple[jax.Array, jax.Array]:
        """Encodes a padded batch.

        Args:
          wav: ``[batch, samples]`` float audio at ``cfg.sample_rate``; clip ``b`` is
            ``wav[b, :lengths[b]]``, anything after it is ignored.
          lengths: ``[batch]`` true sample counts (each giving at least one frame).
          num_quantizers: static number of codebooks (see ``cfg.quantizers_for_bandwidth``).
        Returns:
          codes ``[batch, frames, num_quantizers]`` int32 (``-1`` past each clip's frames)
          and the frame count of each clip ``[batch]``.
        """
        embeddings, frames = self.latents(wav, lengths)
        return self.quantize(embeddings, frames, num_quantizers), frames

    def quantize(self, latents: jax.Array, frames: jax.Array, num_quantizers: int) -> jax.Array:
        """Latents ``[batch, T, codebook_dim]`` -> codes ``[batch, T, num_quantizers]``
        (``-1`` past each clip's ``frames``)."""
        return time_mask(self.quantizer.encode(latents, num_quantizers) + 1, frames) - 1

    def latents(self, wav: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The quantizer's input ``[batch, frames, codebook_dim]`` (semantic + acoustic
        features through ``fc``) and each clip's frame count ``[batch]``; arguments as
        :meth:`encode`."""
        wav = time_mask(wav, lengths)
        semantic_wav = jnp.pad(wav, ((0, 0), (self.pad, self.pad)))
        features, frames = self.semantic_model(semantic_wav, lengths + 2 * self.pad)
        e_semantic = self.encoder_semantic(features, frames)
        shift = self.acoustic_shift(lengths, frames)
        acoustic_wav = jax.vmap(jnp.roll)(jnp.pad(wav, ((0, 0), (0, 2 * self.pad))), shift)
        e_acoustic, _ = self.acoustic_encoder(acoustic_wav, lengths + 2 * shift)
        return self.fuse(e_acoustic, e_semantic), frames

    def acoustic_shift(self, lengths, frames):
        """Samples of zeros before each clip's acoustic input: HF pads it by half a hop on
        each side when the DAC frame count of the bare clip differs from the semantic one
        (ints or integer arrays)."""
        return jnp.where(self.acoustic_encoder.out_length(lengths) != frames, self.pad, 0)

    def fuse(self, e_acoustic: jax.Array, e_semantic: jax.Array) -> jax.Array:
        """Acoustic ``[B, >= T, 256]`` and semantic ``[B, T, 768]`` latents -> the quantizer's
        input ``[B, T, codebook_dim]``."""
        num = e_semantic.shape[1]
        if e_acoustic.shape[1] < num:
            raise ValueError(
                f"acoustic encoder gives {e_acoustic.shape[1]} frames, fewer than the {num} semantic frames"
            )
        return self.fc(jnp.concatenate([e_acoustic[:, :num], e_semantic], axis=-1))

    def quantized(self, codes: jax.Array, frames: jax.Array) -> jax.Array:
        """Codes ``[batch, frames, n]`` (only the first ``frames [batch]`` of each clip are
        read) -> summed codebook vectors ``[batch, frames, codebook_dim]``."""
        return self.quantizer.decode(time_mask(codes, frames))

    def decode(self, codes: jax.Array, frames: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Codes ``[batch, frames, n]`` -> audio ``[batch, frames * hop]`` (zero past each
        clip's ``frames * hop`` samples) and the sample counts ``[batch]``."""
        wav, samples = self.acoustic_decoder(self.fc2(self.quantized(codes, frames)), frames)
        return time_mask(wav, samples), samples

    def decode_semantic(self, codes: jax.Array, frames: jax.Array) -> jax.Array:
        """Codes ``[batch, frames, n]`` -> reconstructed HuBERT features ``[batch, frames,
        hidden]`` (XCodec's semantic reconstruction target)."""
        return self.decoder_semantic(self.fc1(self.quantized(codes, frames)), frames)


def num_parameters(model: XCodec) -> int:
    """Trainable parameters (``nnx.Param``; codebooks are buffers, as in HF)."""
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
