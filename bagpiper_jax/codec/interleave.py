"""Delay interleave of codec streams (docs/codec.md) and codes <-> unified vocabulary ids.

Training format: stream ``n`` is shifted right by ``n`` frames, so ``T`` codec frames
become ``T + S - 1`` frames for ``S`` streams; the gaps hold that stream's audio pad id.
Generation undoes it with :func:`delay_deinterleave`. Host-side numpy.
"""

from __future__ import annotations

import numpy as np

from bagpiper_jax.vocab import Vocab


def delay_interleave(x: np.ndarray, pad_values, out: np.ndarray | None = None) -> np.ndarray:
    """``[T, S]`` -> ``[T + S - 1, S]``: column ``n`` delayed by ``n`` frames, the ``S - 1``
    free cells of column ``n`` set to ``pad_values[n]``. Written into ``out`` when given
    (e.g. a slice of a preallocated sequence), else into a new array of ``x``'s dtype."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"expected [frames, streams], got shape {x.shape}")
    frames, streams = x.shape
    pad_values = np.asarray(pad_values)
    if pad_values.shape != (streams,):
        raise ValueError(f"need one pad value per stream ({streams}), got shape {pad_values.shape}")
    if out is None:
        out = np.empty((frames + streams - 1, streams), x.dtype)
    out[...] = pad_values
    out[np.arange(frames)[:, None] + np.arange(streams), np.arange(streams)] = x
    return out


def delay_deinterleave(x: np.ndarray) -> np.ndarray:
    """``[T + S - 1, S]`` -> ``[T, S]``: inverse of :func:`delay_interleave` (frame ``t`` of
    stream ``n`` is read at row ``t + n``; the pad cells are dropped)."""
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] < x.shape[1] - 1:
        raise ValueError(f"expected [frames + streams - 1, streams] with frames >= 0, got shape {x.shape}")
    frames = x.shape[0] - x.shape[1] + 1
    return np.stack([x[n : n + frames, n] for n in range(x.shape[1])], axis=1)


def codes_to_ids(codes: np.ndarray, vocab: Vocab) -> np.ndarray:
    """Codec codes ``[T, S]`` (``S <= vocab.num_streams``) -> unified ids ``[T, S]`` int32,
    stream ``n`` in its own block. Raises ``ValueError`` for out-of-range codes."""
    codes = np.asarray(codes)
    _check_streams(codes, vocab)
    return np.stack([vocab.audio_ids(codes[:, n], n) for n in range(codes.shape[1])], axis=1).astype(np.int32)


def ids_to_codes(ids: np.ndarray, vocab: Vocab) -> np.ndarray:
    """Unified ids ``[T, S]`` -> codes ``[T, S]`` int32. Every id must be a code of its own
    stream (not the pad, not another stream's block)."""
    ids = np.asarray(ids)
    _check_streams(ids, vocab)
    out = np.empty(ids.shape, np.int32)
    for n in range(ids.shape[1]):
        start, end = vocab.stream_range(n)
        bad = (ids[:, n] <= start) | (ids[:, n] >= end)
        if bad.any():
            t = int(np.argmax(bad))
            raise ValueError(
                f"id {ids[t, n]} at frame {t} of stream {n} is not a code of that stream "
                f"(codes are ({start}, {end}); {start} is its pad)"
            )
        out[:, n] = ids[:, n] - start - 1
    return out


def interleaved_ids(codes: np.ndarray, vocab: Vocab) -> np.ndarray:
    """Codes ``[T, S]`` -> delay-interleaved unified ids ``[T + S - 1, S]`` (training format)."""
    codes = np.asarray(codes)
    _check_streams(codes, vocab)
    return delay_interleave(codes_to_ids(codes, vocab), vocab.audio_pads[: codes.shape[1]])


def codes_from_interleaved_ids(ids: np.ndarray, vocab: Vocab) -> np.ndarray:
    """Inverse of :func:`interleaved_ids`: ``[T + S - 1, S]`` ids -> codes ``[T, S]``."""
    return ids_to_codes(delay_deinterleave(ids), vocab)


def _check_streams(x: np.ndarray, vocab: Vocab):
    if x.ndim != 2 or not 1 <= x.shape[1] <= vocab.num_streams:
        raise ValueError(f"expected [frames, streams] with 1..{vocab.num_streams} streams, got shape {x.shape}")
