"""The train program: the batch's abstract shapes, the train state's shardings and the
jitted train / eval steps (with the frozen audio tower), compiled ahead of time on
abstract inputs.

``bagpiper-train`` runs it; ``bagpiper_jax.train.aot`` and the benchmarks compile the
same program for other devices (a TPU slice described from a CPU host, one GPU).
"""

from __future__ import annotations

import dataclasses
import time

import jax
import optax
from flax import nnx
from jax.sharding import Mesh

from bagpiper_jax.audio_encoder.frozen import FrozenTower, mel_bins
from bagpiper_jax.config import Config, ConfigError
from bagpiper_jax.model.batch import Batch
from bagpiper_jax.model.create import abstract_model
from bagpiper_jax.sharding import batch_shards, with_shardings
from bagpiper_jax.train.optimizer import learning_rate, make_optimizer
from bagpiper_jax.train.state import TrainState, abstract_state, train_state_shardings
from bagpiper_jax.train.step import jit_steps, make_eval_step, make_train_step
from bagpiper_jax.train.trainable import TrainableParams


@dataclasses.dataclass
class TrainProgram:
    """Everything the loop needs besides data and state, for one config on one mesh."""

    mesh: Mesh
    graphdef: nnx.GraphDef
    tx: optax.GradientTransformation
    abstract: TrainState  # shapes only
    state_shardings: TrainState
    batch_shardings: Batch
    example: Batch  # the global batch's shapes (``Batch.abstract``)
    tower: FrozenTower | None
    trainable: TrainableParams
    train_step: jax.stages.Wrapped  # jitted, state donated
    eval_step: jax.stages.Wrapped

    def compile(self) -> tuple[jax.stages.Compiled, float]:
        """The train step lowered and compiled on abstract inputs: ``(compiled, seconds)``."""
        with jax.set_mesh(self.mesh):
            start = time.perf_counter()
            tower_params = None if self.tower is None else self.tower.params
            compiled = self.train_step.lower(
                with_shardings(self.abstract, self.state_shardings),
                tower_params,
                with_shardings(self.example, self.batch_shardings),
            ).compile()
        return compiled, time.perf_counter() - start


def build_program(cfg: Config, mesh: Mesh, tower: FrozenTower | None = None) -> TrainProgram:
    """The train step ``bagpiper-train`` runs (optimizer update of the ``train.trainable``
    params, gradient accumulation, non-finite guard, donated state) and its eval step, for
    ``data.batch_rows`` rows of ``data.row_frames``;
    ``tower`` encodes the batch's continuous audio (None: the model takes none)."""
    rules, tx = cfg.mesh.rules, make_optimizer(cfg.train)
    if cfg.data.batch_rows % cfg.train.grad_accum:
        raise ConfigError(
            f"data.batch_rows={cfg.data.batch_rows} is not a multiple of train.grad_accum={cfg.train.grad_accum}"
        )
    shards = batch_shards(mesh, rules)
    if cfg.data.batch_rows % shards:
        raise ConfigError(
            f"data.batch_rows={cfg.data.batch_rows} does not split over the {shards} batch shards of the mesh "
            f"(mesh axes {dict(mesh.shape)}, rule activation_batch={dict(rules).get('activation_batch')})"
        )
    if tower is not None:
        tower.check_fits(cfg.model.continuous_dim, cfg.data.piece_frames)
    graphdef, abstract_params = abstract_model(cfg.model, cfg.runtime, rules)
    trainable = TrainableParams.select(cfg.train.trainable, abstract_params)
    abstract = abstract_state(abstract_params, tx, trainable)
    state_sh = train_state_shardings(abstract, mesh, rules)
    example = Batch.abstract(cfg, cfg.data.batch_rows, mel_bins(tower))
    batch_sh = example.shardings(mesh, rules)
    sources = max(1, len(cfg.data.mixture))
    train_step, eval_step = jit_steps(
        make_train_step(graphdef, tower, tx, learning_rate(cfg.train), cfg.train.grad_accum, sources, trainable),
        make_eval_step(graphdef, tower, sources),
        state_sh,
        None if tower is None else tower.shardings,
        batch_sh,
        mesh,
    )
    return TrainProgram(
        mesh, graphdef, tx, abstract, state_sh, batch_sh, example, tower, trainable, train_step, eval_step
    )
