"""Synthetic packed batches with the real structure, for benchmarks."""
from __future__ import annotations

import numpy as np

from bagpiper_jax.model.bagpiper import Batch
from bagpiper_jax.vocab import Vocab


def synthetic_batch(vocab: Vocab, rows: int, frames: int, seed: int, continuous_dim: int = 0,
                    continuous_frames: int = 0) -> Batch:
    """Rows of two packed segments: text frames on stream 0, then audio frames on all streams.

    With ``continuous_frames > 0``, the first frames of the text segment are replaced by
    continuous features ``[rows, continuous_frames, continuous_dim]``.
    """
    rng = np.random.default_rng(seed)
    ids = np.zeros((rows, frames, vocab.num_streams), np.int32)
    mask = np.zeros(ids.shape, np.float32)
    half = frames // 2
    ids[:, :half, 0] = vocab.text_ids(rng.integers(0, vocab.text_size, (rows, half)))
    mask[:, :half, 0] = 1.0
    for s in range(vocab.num_streams):
        ids[:, half:, s] = vocab.audio_ids(rng.integers(0, vocab.codebook_size, (rows, frames - half)), s)
    mask[:, half:] = 1.0 / vocab.num_streams
    segment_ids = np.where(np.arange(frames) < half, 1, 2).astype(np.int32)[None].repeat(rows, 0)
    positions = np.concatenate([np.arange(half), np.arange(frames - half)]).astype(np.int32)[None].repeat(rows, 0)
    if not continuous_frames:
        return Batch(ids=ids, segment_ids=segment_ids, positions=positions, loss_mask=mask)
    features = rng.normal(size=(rows, continuous_frames, continuous_dim)).astype(np.float32)
    frame_index = np.arange(1, continuous_frames + 1, dtype=np.int32)[None].repeat(rows, 0)
    mask[:, :continuous_frames + 1, 0] = 0.0  # features are inputs, never targets
    return Batch(ids=ids, segment_ids=segment_ids, positions=positions, loss_mask=mask,
                 continuous=features, continuous_frames=frame_index)
