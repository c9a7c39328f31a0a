"""Continuous (user/system) audio as it travels in a batch: log-mel pieces, and the
encoder features that replace frames of the model input.

A row of a training batch or of a generation prompt carries its clips' log-mel cut into
pieces of at most one encoder attention window (``AudioEncoderConfig.window_frames``
frames: windows never span two pieces, so encoding the pieces apart equals encoding the
clip whole), stored back to back, unpadded, in one per-row stream. Per piece it records
where the piece starts in that stream, its length, the length of the clip it was cut from
(the tower treats a short last piece as part of its clip) and the row frame where its
encoder tokens go.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class MelPieces:
    """Log-mel pieces of a batch of rows (numpy on the host, ``jax.Array`` s on devices).

    mel: float32 ``[rows, mel_frames, mel_bins]``: each row's pieces back to back (zero after the last).
    offset: int32 ``[rows, pieces]``: first frame of each piece in ``mel`` (0 for an unused slot).
    lengths: int32 ``[rows, pieces]``: frames of each piece (0 = unused slot).
    clip_lengths: int32 ``[rows, pieces]``: frames of the clip each piece was cut from.
    start: int32 ``[rows, pieces]``: row frame of each piece's first encoder token (-1 = unused).
    """

    mel: jax.Array
    offset: jax.Array
    lengths: jax.Array
    clip_lengths: jax.Array
    start: jax.Array

    # Logical axis names of each field (rows are split like the batch, the rest whole).
    AXES: ClassVar[dict[str, tuple]] = {
        "mel": ("activation_batch", None, None),
        "offset": ("activation_batch", None),
        "lengths": ("activation_batch", None),
        "clip_lengths": ("activation_batch", None),
        "start": ("activation_batch", None),
    }

    @classmethod
    def abstract(cls, rows: int, mel_frames: int, pieces: int, mel_bins: int) -> MelPieces:
        """Shapes and dtypes only (``jax.ShapeDtypeStruct`` leaves)."""

        def spec(*shape, dtype=jnp.int32):
            return jax.ShapeDtypeStruct(shape, dtype)

        return cls(
            spec(rows, mel_frames, mel_bins, dtype=jnp.float32),
            spec(rows, pieces),
            spec(rows, pieces),
            spec(rows, pieces),
            spec(rows, pieces),
        )

    @classmethod
    def empty(cls, rows: int, mel_bins: int) -> MelPieces:
        """Host pieces of rows without continuous audio (no piece slots)."""
        none = np.zeros((rows, 0), np.int32)
        return cls(np.zeros((rows, 0, mel_bins), np.float32), none, none, none, none)

    def windows(self, window_frames: int) -> jax.Array:
        """The pieces gathered into one window slot each: ``[rows, pieces, window_frames,
        mel_bins]``, zero past each piece's length (pieces are at most one window)."""
        frames = jnp.arange(window_frames)
        index = jnp.minimum(self.offset[..., None] + frames, self.mel.shape[1] - 1)  # [rows, pieces, window]
        gathered = jax.vmap(lambda m, i: m[i])(self.mel, index)
        return jnp.where((frames < self.lengths[..., None])[..., None], gathered, 0)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Continuous:
    """Encoder features that replace frames of the model input (after the adaptor).

    features: ``[rows, n, output_dim]`` (zero where unused).
    frames: int32 ``[rows, n]``: the row frame each feature row replaces (-1 = none).
    """

    features: jax.Array
    frames: jax.Array
