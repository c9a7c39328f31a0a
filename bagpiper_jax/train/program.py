"""The train program: the frozen audio tower, the batch's abstract shapes, the train state's
shardings and the jitted train / eval steps, compiled ahead of time on abstract inputs.

``bagpiper-train`` runs it; ``bagpiper_jax.train.aot`` and the benchmarks compile the
same program for other devices (a TPU slice described from a CPU host, one GPU).
"""
from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from bagpiper_jax.config import Config
from bagpiper_jax.data.pipeline import DataError
from bagpiper_jax.model.create import abstract_model
from bagpiper_jax.sharding import state_shardings
from bagpiper_jax.train.optimizer import learning_rate, make_optimizer
from bagpiper_jax.train.state import TrainState, abstract_state, train_state_shardings, with_shardings
from bagpiper_jax.train.step import batch_shardings, jit_steps, make_eval_step, make_train_step

MEL_BINS_WITHOUT_ENCODER = 128


@dataclasses.dataclass
class Frozen:
    """The frozen audio tower split for the jitted steps (all None without an encoder)."""

    graphdef: nnx.GraphDef | None = None
    params: nnx.State | None = None
    shardings: nnx.State | None = None
    mel_bins: int = MEL_BINS_WITHOUT_ENCODER


def load_frozen_encoder(cfg: Config, mesh) -> Frozen:
    if not cfg.model.audio_encoder:
        return Frozen()
    from bagpiper_jax.audio_encoder.checkpoint import load_tower
    tower = load_tower(cfg.model.audio_encoder, jnp.dtype(cfg.model.encoder_dtype), mesh, cfg.mesh.rules)
    if tower.config.output_dim != cfg.model.continuous_dim:
        raise DataError(f"audio encoder {cfg.model.audio_encoder} outputs {tower.config.output_dim} features but "
                        f"model.continuous_dim is {cfg.model.continuous_dim}")
    if cfg.data.piece_frames != tower.config.window_frames:
        raise DataError(f"data.piece_frames={cfg.data.piece_frames} must equal the encoder's attention "
                        f"window ({tower.config.window_frames} mel frames, n_window_infer)")
    graphdef, params = nnx.split(tower)
    return Frozen(graphdef, params, state_shardings(params, mesh, cfg.mesh.rules), tower.config.num_mel_bins)


def abstract_batch(cfg: Config, rows: int, mel_bins: int) -> dict:
    d, s = cfg.data, cfg.model.num_streams
    spec = jax.ShapeDtypeStruct
    return {"ids": spec((rows, d.row_frames, s), jnp.int32), "segment_ids": spec((rows, d.row_frames), jnp.int32),
            "positions": spec((rows, d.row_frames), jnp.int32), "loss_mask": spec((rows, d.row_frames, s), jnp.float32),
            "mel": spec((rows, d.mel_frames_per_row, mel_bins), jnp.float32),
            "mel_offset": spec((rows, d.max_pieces_per_row), jnp.int32),
            "mel_lengths": spec((rows, d.max_pieces_per_row), jnp.int32),
            "mel_clip_lengths": spec((rows, d.max_pieces_per_row), jnp.int32),
            "mel_start": spec((rows, d.max_pieces_per_row), jnp.int32)}



@dataclasses.dataclass
class TrainProgram:
    """Everything the loop needs besides data and state, for one config on one mesh."""

    mesh: Mesh
    graphdef: nnx.GraphDef
    tx: optax.GradientTransformation
    abstract: TrainState  # shapes only
    state_shardings: TrainState
    batch_shardings: dict
    example: dict  # the global batch's shapes (``abstract_batch``)
    frozen: Frozen
    train_step: jax.stages.Wrapped  # jitted, state donated
    eval_step: jax.stages.Wrapped

    def compile(self) -> tuple[jax.stages.Compiled, float]:
        """The train step lowered and compiled on abstract inputs: ``(compiled, seconds)``."""
        with jax.set_mesh(self.mesh):
            start = time.perf_counter()
            compiled = self.train_step.lower(with_shardings(self.abstract, self.state_shardings), self.frozen.params,
                                             with_shardings(self.example, self.batch_shardings)).compile()
        return compiled, time.perf_counter() - start


def build_program(cfg: Config, mesh: Mesh, frozen: Frozen = Frozen()) -> TrainProgram:
    """The train step ``bagpiper-train`` runs (optimizer update, gradient accumulation,
    donated state) and its eval step, for ``data.batch_rows`` rows of ``data.row_frames``."""
    rules, tx = cfg.mesh.rules, make_optimizer(cfg.train)
    if cfg.data.batch_rows % cfg.train.grad_accum:
        raise DataError(f"data.batch_rows={cfg.data.batch_rows} is not a multiple of "
                        f"train.grad_accum={cfg.train.grad_accum}")
    graphdef, abstract_params = abstract_model(cfg.model, rules)
    abstract = abstract_state(abstract_params, tx)
    state_sh = train_state_shardings(abstract, mesh, rules)
    example = abstract_batch(cfg, cfg.data.batch_rows, frozen.mel_bins)
    batch_sh = batch_shardings(example, mesh, rules)
    train_step, eval_step = jit_steps(
        make_train_step(graphdef, frozen.graphdef, tx, learning_rate(cfg.train), cfg.train.grad_accum),
        make_eval_step(graphdef, frozen.graphdef), state_sh, frozen.shardings, batch_sh, mesh)
    return TrainProgram(mesh, graphdef, tx, abstract, state_sh, batch_sh, example, frozen, train_step, eval_step)
