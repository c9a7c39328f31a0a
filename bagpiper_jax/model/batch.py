"""The packed batch: the one input type of the train and eval steps (and of the model's loss).

The Grain pipeline produces it (numpy, this process's rows), ``to_global_arrays`` turns
it into global ``jax.Array`` s sharded by :meth:`Batch.shardings`, and the train program
compiles against :meth:`Batch.abstract`.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding

from bagpiper_jax.audio_encoder.pieces import MelPieces
from bagpiper_jax.config import Config
from bagpiper_jax.sharding import Rules, logical_to_spec


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Batch:
    """Packed rows of multi-stream frames.

    ids: int32 ``[rows, frames, streams]`` unified-vocabulary ids.
    segment_ids: int32 ``[rows, frames]``; 1, 2, ... per packed example, 0 = padding.
    positions: int32 ``[rows, frames]``; RoPE positions, restarting at 0 per segment.
    loss_mask: float32 ``[rows, frames, streams]`` per-frame, per-stream loss weights.
    pieces: the rows' continuous-audio log-mel pieces (None: no continuous audio), which the
      frozen tower turns into features for the placeholder frames.
    source: int32 ``[rows, frames]``: the mixture source (``data.mixture`` index) of each
      frame (None: one source).
    """

    ids: jax.Array
    segment_ids: jax.Array
    positions: jax.Array
    loss_mask: jax.Array
    pieces: MelPieces | None = None
    source: jax.Array | None = None

    # Logical axis names of the frame fields (see MelPieces.AXES for the pieces).
    AXES: ClassVar[dict[str, tuple]] = {
        "ids": ("activation_batch", "activation_length", None),
        "segment_ids": ("activation_batch", "activation_length"),
        "positions": ("activation_batch", "activation_length"),
        "loss_mask": ("activation_batch", "activation_length", None),
        "source": ("activation_batch", "activation_length"),
    }

    @property
    def rows(self) -> int:
        return self.ids.shape[0]

    @classmethod
    def abstract(cls, cfg: Config, rows: int, mel_bins: int) -> Batch:
        """Shapes and dtypes of ``rows`` packed rows of ``cfg``'s data layout (with pieces)."""
        frames, streams, d = cfg.data.row_frames, cfg.model.num_streams, cfg.data
        spec = jax.ShapeDtypeStruct
        return cls(
            spec((rows, frames, streams), jnp.int32),
            spec((rows, frames), jnp.int32),
            spec((rows, frames), jnp.int32),
            spec((rows, frames, streams), jnp.float32),
            MelPieces.abstract(rows, d.mel_frames_per_row, d.max_pieces_per_row, mel_bins),
            spec((rows, frames), jnp.int32),
        )

    def shardings(self, mesh: Mesh, rules: Rules) -> Batch:
        """``NamedSharding`` s of every field (rows over the batch axes of ``rules``)."""

        def named(axes):
            return NamedSharding(mesh, logical_to_spec(axes, rules))

        pieces = None if self.pieces is None else MelPieces(**{k: named(a) for k, a in MelPieces.AXES.items()})
        frames = {k: None if getattr(self, k) is None else named(a) for k, a in self.AXES.items()}
        return Batch(**frames, pieces=pieces)


def to_global_arrays(batch: Batch, shardings: Batch) -> Batch:
    """This process's rows (numpy) -> global ``jax.Array`` s sharded per ``shardings``."""
    return jax.tree.map(jax.make_array_from_process_local_data, shardings, batch)
