"""Continuous audio input: encoder pieces of a packed batch -> adaptor inputs for the model.

A packed row carries up to ``pieces`` log-mel pieces (at most one encoder attention window
each, see :mod:`bagpiper_jax.data.template`) and, per piece, the row frame where its
encoder tokens go. The training pipeline packs a row's pieces back to back in one log-mel
stream (``mel_offset`` says where each starts); they are gathered into one window-sized
slot each here. The frozen tower encodes all pieces of the batch at once; token ``j`` of a
piece replaces frame ``start + j`` of its row.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from bagpiper_jax.audio_encoder.tower import AudioTower, encode


def encode_pieces(tower: AudioTower, mel: jax.Array, mel_lengths: jax.Array, mel_clip_lengths: jax.Array,
                  mel_start: jax.Array, mel_offset: jax.Array | None = None):
    """Encoder features and their frames for :class:`bagpiper_jax.model.Batch`.

    Args:
      mel: ``[batch, pieces, piece_frames, mel_bins]``, or with ``mel_offset`` (the training
        pipeline's layout) ``[batch, mel_frames, mel_bins]``: each row's pieces back to back,
        piece ``j`` at frames ``mel_offset[:, j] + [0, mel_lengths[:, j])``, gathered into
        windows of the tower's ``window_frames`` (pieces are at most one window);
      mel_lengths: ``[batch, pieces]`` (0 = empty slot); mel_clip_lengths: ``[batch, pieces]``
        frames of each piece's whole clip (the tower treats a short last piece as part of its
        clip); mel_start: ``[batch, pieces]`` first frame of each piece's tokens.
    Returns:
      ``continuous [batch, pieces * tokens, output_dim]`` (zero where unused, no gradient
      to the tower) and ``continuous_frames [batch, pieces * tokens]`` (-1 = unused).
    """
    if mel_offset is not None:
        mel = gather_pieces(mel, mel_offset, mel_lengths, tower.config.window_frames)
    batch, pieces, frames, bins = mel.shape
    out, token_lengths = encode(tower, mel.reshape(batch * pieces, frames, bins), mel_lengths.reshape(-1),
                                jnp.maximum(mel_clip_lengths.reshape(-1), 1))
    tokens = out.shape[1]
    valid = jnp.arange(tokens)[None, :] < token_lengths[:, None]  # [batch * pieces, tokens]
    out = jnp.where(valid[..., None], out, 0)  # unused slots contribute nothing, not even NaN * 0
    index = jnp.where(valid, mel_start.reshape(-1)[:, None] + jnp.arange(tokens)[None, :], -1)
    return out.reshape(batch, pieces * tokens, -1), index.reshape(batch, pieces * tokens)


def gather_pieces(mel: jax.Array, mel_offset: jax.Array, mel_lengths: jax.Array, piece_frames: int) -> jax.Array:
    """``mel [batch, mel_frames, bins]`` (pieces back to back) -> ``[batch, pieces,
    piece_frames, bins]``, zero past each piece's length."""
    frames = jnp.arange(piece_frames)
    index = jnp.minimum(mel_offset[..., None] + frames, mel.shape[1] - 1)  # [batch, pieces, piece_frames]
    pieces = jax.vmap(lambda m, i: m[i])(mel, index)
    return jnp.where((frames < mel_lengths[..., None])[..., None], pieces, 0)
