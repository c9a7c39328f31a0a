"""A run's first state: random, or the params of ``train.init_from`` — how one stage of the
recipe starts from the previous one (docs/training.md, The recipe).

``train.init_from`` names an HF Qwen3 directory, a model checkpoint, or a run directory
(its latest checkpoint) or one step of a run (``<checkpoint_dir>/<step>``). Only the params
are read; the optimizer state is fresh, for this run's ``train.trainable`` params, and the
step is 0. The data iterator starts anew, unless ``train.continue_data`` is set and
``init_from`` is a run: then it continues from the position that checkpoint saved, so the
new stage sees the batches after those the previous one trained on (``data.*`` must define
the same stream: same sources, seed, row and batch layout).

This applies only when the run has no checkpoint of its own; once it has one, a restart
resumes from it exactly (state, optimizer, data position), whatever ``init_from`` says.
"""

from __future__ import annotations

import dataclasses
import logging

from bagpiper_jax.checkpoint.model_checkpoint import ParamsSource, load_init_params
from bagpiper_jax.checkpoint.run import RunCheckpoints
from bagpiper_jax.config import Config, ConfigError, DataConfig
from bagpiper_jax.model.create import init_model
from bagpiper_jax.train.program import TrainProgram
from bagpiper_jax.train.state import TrainState, init_state

log = logging.getLogger(__name__)

# data.* fields that do not change the batches the training pipeline yields.
_STREAM_NEUTRAL = (
    "prepared",  # compared through the mixture
    "sources",
    "eval_prepared",
    "demo",
    "demo_examples",
    "demo_heldout",
    "workers",
    "read_threads",
    "prefetch_buffer",
    "examples_per_shard",
    "manifest_chunk_bytes",
    "max_audio_seconds",
)


def stream_differences(data: DataConfig, previous: DataConfig) -> list[str]:
    """The ``data.*`` settings that make ``data`` yield another stream than ``previous``."""

    def mixture(d: DataConfig):
        return [dataclasses.replace(s, eval_prepared="") for s in d.mixture]

    wrong = [
        f"data.{f.name}={getattr(data, f.name)!r} (was {getattr(previous, f.name)!r})"
        for f in dataclasses.fields(DataConfig)
        if f.name not in _STREAM_NEUTRAL and getattr(data, f.name) != getattr(previous, f.name)
    ]
    if mixture(data) != mixture(previous):
        wrong.append(f"data sources {mixture(data)} (were {mixture(previous)})")
    return wrong


def continue_data(init_from: str, cfg: Config, data_iterator) -> int:
    """Sets ``data_iterator`` to the position saved with ``init_from``'s checkpoint (a run
    or one of its steps); returns that checkpoint's step."""
    source = ParamsSource(init_from)
    if source.run_checkpoints is None:
        raise ConfigError(
            f"train.continue_data: train.init_from={init_from} is a model checkpoint, which holds no data "
            f"position; give the previous stage's run directory, or drop train.continue_data"
        )
    wrong = stream_differences(cfg.data, source.config.data)
    if wrong:
        raise ConfigError(
            f"train.continue_data: this run's data differs from that of {init_from}: {'; '.join(wrong)}. "
            f"Make them equal, or drop train.continue_data to start the data anew"
        )
    ckpts = RunCheckpoints(source.run_checkpoints, keep=2**31 - 1, async_save=False)  # read only
    try:
        ckpts.restore_data(source.step, data_iterator)
    finally:
        ckpts.close()
    return source.step


def initial_state(cfg: Config, program: TrainProgram, data_iterator) -> TrainState:
    """The step-0 state of a run without checkpoints (see the module doc)."""
    mesh, t = program.mesh, cfg.train
    if t.continue_data and not t.init_from:
        raise ConfigError("train.continue_data needs train.init_from (the run whose data to continue)")
    if t.init_from:
        params = load_init_params(t.init_from, cfg, mesh)
        data_note = "data from the start"
        if t.continue_data:
            data_note = f"data continued from its step {continue_data(t.init_from, cfg, data_iterator)}"
        log.info("params from %s (fresh optimizer, step 0, %s)", t.init_from, data_note)
    else:
        _, params, _ = init_model(cfg.model, cfg.runtime, mesh, cfg.mesh.rules, cfg.seed)
    return init_state(params, program.tx, program.state_shardings, program.trainable)
