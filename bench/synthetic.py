"""Synthetic packed batches with the real structure, for benchmarks."""

from __future__ import annotations

import numpy as np

from bagpiper_jax.audio_encoder.pieces import MelPieces
from bagpiper_jax.model.batch import Batch
from bagpiper_jax.vocab import Vocab


def synthetic_batch(vocab: Vocab, rows: int, frames: int, seed: int, pieces: MelPieces | None = None) -> Batch:
    """Rows of two packed segments: text frames on stream 0, then audio frames on all
    streams; ``pieces`` (e.g. zeros of the compiled shapes) ride along unchanged."""
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
    return Batch(ids=ids, segment_ids=segment_ids, positions=positions, loss_mask=mask, pieces=pieces)
