"""The frozen audio tower as a part of the model's input: mel pieces -> :class:`Continuous`.

Training and generation hold the tower the same way: a :class:`FrozenTower` keeps its
graph, params and their shardings; jitted steps take the params as an argument of their
own (never donated; no gradient, no optimizer state) and call :meth:`FrozenTower.encode`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from bagpiper_jax.audio_encoder.config import AudioEncoderConfig
from bagpiper_jax.audio_encoder.pieces import Continuous, MelPieces
from bagpiper_jax.audio_encoder.tower import AudioTower, abstract_tower, encode
from bagpiper_jax.config import ConfigError
from bagpiper_jax.sharding import Rules, state_shardings, with_shardings

MEL_BINS_WITHOUT_TOWER = 128  # the width of (empty) mel pieces for a model without a tower


@dataclasses.dataclass(frozen=True, eq=False)
class FrozenTower:
    """A frozen :class:`AudioTower` split for jitted steps.

    Attributes:
      graphdef: the tower's graph (static).
      params: its parameters (arrays sharded by ``shardings``, or abstract ones for AOT).
      shardings: the params' ``NamedSharding`` s (from their logical axes and the rules).
      config: the tower's configuration.
    """

    graphdef: nnx.GraphDef
    params: nnx.State
    shardings: nnx.State
    config: AudioEncoderConfig

    @classmethod
    def from_tower(cls, tower: AudioTower, mesh: Mesh, rules: Rules) -> FrozenTower:
        graphdef, params = nnx.split(tower)
        return cls(graphdef, params, state_shardings(params, mesh, rules), tower.config)

    @classmethod
    def abstract(
        cls, mesh: Mesh, rules: Rules, config: AudioEncoderConfig = AudioEncoderConfig(), dtype: str = "bfloat16"
    ) -> FrozenTower:
        """The tower (default: Qwen3-Omni's) with abstract params sharded by ``rules``, as an
        ahead-of-time compile of a step receives it; nothing is allocated."""
        graphdef, params = nnx.split(abstract_tower(config, jnp.dtype(dtype)))
        shardings = state_shardings(params, mesh, rules)
        return cls(graphdef, with_shardings(params, shardings), shardings, config)

    @property
    def mel_bins(self) -> int:
        return self.config.num_mel_bins

    def check_fits(self, continuous_dim: int, piece_frames: int, source: str = "the audio tower") -> None:
        """``ConfigError`` unless the tower feeds the model (``model.continuous_dim``) and
        the data's pieces are its attention windows (``data.piece_frames``)."""
        if self.config.output_dim != continuous_dim:
            raise ConfigError(
                f"{source} outputs {self.config.output_dim} features but model.continuous_dim is {continuous_dim}"
            )
        if piece_frames != self.config.window_frames:
            raise ConfigError(
                f"data.piece_frames={piece_frames} must equal the encoder's attention window of "
                f"{source} ({self.config.window_frames} mel frames, n_window_infer)"
            )

    def encode(self, params: nnx.State, pieces: MelPieces) -> Continuous:
        """Encoder features of every piece of a batch (inside a jitted step; ``params`` are
        this tower's, as passed to the step). Token ``j`` of a piece replaces row frame
        ``pieces.start + j``; the features get no gradient.

        Returns ``Continuous(features [rows, pieces * tokens, output_dim], frames [rows,
        pieces * tokens])``: features zero and frames -1 where unused.
        """
        tower = nnx.merge(self.graphdef, params)
        windows = pieces.windows(self.config.window_frames)
        rows, slots, frames, bins = windows.shape
        out, token_lengths = encode(
            tower,
            windows.reshape(rows * slots, frames, bins),
            pieces.lengths.reshape(-1),
            jnp.maximum(pieces.clip_lengths.reshape(-1), 1),
        )
        tokens = out.shape[1]
        valid = jnp.arange(tokens)[None, :] < token_lengths[:, None]  # [rows * slots, tokens]
        out = jnp.where(valid[..., None], out, 0)  # unused slots contribute nothing, not even NaN * 0
        index = jnp.where(valid, pieces.start.reshape(-1)[:, None] + jnp.arange(tokens)[None, :], -1)
        return Continuous(out.reshape(rows, slots * tokens, -1), index.reshape(rows, slots * tokens))


def mel_bins(tower: FrozenTower | None) -> int:
    """Mel bins of the pieces a model with (or without) ``tower`` takes."""
    return MEL_BINS_WITHOUT_TOWER if tower is None else tower.mel_bins


def tokens_for(tower: FrozenTower | None) -> Callable:
    """Mel frames -> encoder tokens of ``tower`` (its n_window; Qwen3-Omni's tower without one)."""
    return (AudioEncoderConfig() if tower is None else tower.config).tokens
