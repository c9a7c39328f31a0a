"""Continuous audio input: encoder pieces of a packed batch -> adaptor inputs for the model.

A packed row carries up to ``pieces`` log-mel pieces (one encoder attention window each,
see :mod:`bagpiper_jax.data.template`) and, per piece, the row frame where its encoder
tokens go. The frozen tower encodes all pieces of the batch at once; token ``j`` of a
piece replaces frame ``start + j`` of its row.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from bagpiper_jax.audio_encoder.tower import AudioTower, encode


def encode_pieces(tower: AudioTower, mel: jax.Array, mel_lengths: jax.Array, mel_clip_lengths: jax.Array,
                  mel_start: jax.Array):
    """Encoder features and their frames for :class:`bagpiper_jax.model.Batch`.

    Args:
      mel: ``[batch, pieces, piece_frames, mel_bins]``; mel_lengths: ``[batch, pieces]``
        (0 = empty slot); mel_clip_lengths: ``[batch, pieces]`` frames of each piece's whole
        clip (the tower treats a short last piece as part of its clip); mel_start:
        ``[batch, pieces]`` first frame of each piece's tokens.
    Returns:
      ``continuous [batch, pieces * tokens, output_dim]`` (zero where unused, no gradient
      to the tower) and ``continuous_frames [batch, pieces * tokens]`` (-1 = unused).
    """
    batch, pieces, frames, bins = mel.shape
    out, token_lengths = encode(tower, mel.reshape(batch * pieces, frames, bins), mel_lengths.reshape(-1),
                                jnp.maximum(mel_clip_lengths.reshape(-1), 1))
    tokens = out.shape[1]
    valid = jnp.arange(tokens)[None, :] < token_lengths[:, None]  # [batch * pieces, tokens]
    out = jnp.where(valid[..., None], out, 0)  # unused slots contribute nothing, not even NaN * 0
    index = jnp.where(valid, mel_start.reshape(-1)[:, None] + jnp.arange(tokens)[None, :], -1)
    return out.reshape(batch, pieces * tokens, -1), index.reshape(batch, pieces * tokens)
