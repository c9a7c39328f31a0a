"""The training loop behind ``bagpiper-train``.

Start-up: mesh from the config; the latest checkpoint of ``run_dir`` if there is one
(train state onto the current mesh, data-iterator state, frames seen), else params from
``train.init_from`` (an HF Qwen3 directory or a model checkpoint from
``bagpiper-convert``) or random; the train step compiled ahead of time with its
``memory_analysis()`` logged. Then per step: next packed batch -> global
arrays -> jitted step. Every ``log_every`` steps: loss, per-stream loss/accuracy, lr,
grad norm, frames/s, MFU, step time to the progress bar, ``metrics.jsonl`` and
TensorBoard; every ``eval_every`` steps an eval pass; every ``checkpoint_every`` steps an
async checkpoint. SIGTERM (preemption) saves at the current step, waits for the save to
commit and returns; the command exits 0.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from tqdm import tqdm

from bagpiper_jax.audio_encoder.frozen import FrozenTower, mel_bins, tokens_for
from bagpiper_jax.checkpoint.frozen_modules import load_frozen_tower
from bagpiper_jax.checkpoint.model_checkpoint import load_init_params
from bagpiper_jax.checkpoint.run import RunCheckpoints, checkpoint_directory
from bagpiper_jax.config import Config
from bagpiper_jax.data.pipeline import build_input
from bagpiper_jax.data.shards import DataError
from bagpiper_jax.model.batch import Batch, to_global_arrays
from bagpiper_jax.model.create import init_model
from bagpiper_jax.model.flops import train_flops_per_frame
from bagpiper_jax.model.loss import stream_metrics
from bagpiper_jax.sharding import make_mesh, with_shardings
from bagpiper_jax.train.metrics_log import MetricsLog
from bagpiper_jax.train.program import build_program
from bagpiper_jax.train.state import init_state
from bagpiper_jax.train.step import compiled_memory_gib
from bagpiper_jax.vocab import Vocab

log = logging.getLogger(__name__)


class Preemption:
    """Turns SIGTERM into a flag the loop checks (agreed on by all processes)."""

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def agreed(self) -> bool:
        if jax.process_count() == 1:
            return self.requested
        return bool(np.any(multihost_utils.process_allgather(np.asarray(self.requested))))

    def restore(self):
        signal.signal(signal.SIGTERM, self._previous)


def train(cfg: Config, progress: bool = True, eval_hook: Callable[[int, nnx.State], dict] | None = None) -> dict:
    """Runs (or resumes) training to ``cfg.train.steps``; returns a summary dict. ``eval_hook(step,
    params)``, when given, adds its metrics to every eval pass (``bagpiper-train`` passes the
    ``train.eval_tasks`` scoring of :mod:`bagpiper_jax.eval.periodic`)."""
    t_cfg = cfg.train
    mesh = make_mesh(cfg.mesh)
    main = jax.process_index() == 0
    vocab = Vocab.from_config(cfg.model)
    tower = load_frozen_tower(cfg, mesh)
    program = build_program(cfg, mesh, tower)
    data = build_input(
        cfg.data,
        vocab,
        tokens_for(tower),
        mel_bins(tower),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    ckpts = RunCheckpoints(checkpoint_directory(cfg), t_cfg.keep_checkpoints)
    latest = ckpts.latest_step()
    frames_seen = 0
    if latest is not None:
        state, meta = ckpts.restore(latest, with_shardings(program.abstract, program.state_shardings), data)
        frames_seen = meta["frames_seen"]
        log.info("resumed from %s/%d", ckpts.directory, latest)
    else:
        if t_cfg.init_from:  # an HF Qwen3 directory or a model checkpoint (bagpiper-convert)
            params = load_init_params(t_cfg.init_from, cfg, mesh)
        else:
            _, params, _ = init_model(cfg.model, cfg.runtime, mesh, cfg.mesh.rules, cfg.seed)
        state = init_state(params, program.tx, program.state_shardings)
    local_rows = cfg.data.batch_rows // jax.process_count()
    tower_params = None if tower is None else tower.params
    batch_sh, eval_step = program.batch_shardings, program.eval_step
    compiled, compile_s = program.compile()
    memory = compiled_memory_gib(compiled)
    logs = MetricsLog(cfg.run_dir, enabled=main)
    if main:
        (logs.run_dir / "config_resolved.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
        log.info("train step compiled in %.1fs; per-device memory (GiB): %s", compile_s, memory)
        print(
            json.dumps(
                {
                    "compiled_s": round(compile_s, 1),
                    "memory_gib": memory,
                    "data": data.report,
                    "start_step": int(state.step),
                }
            ),
            flush=True,
        )
    frames_per_step = cfg.data.batch_rows * cfg.data.row_frames
    flops_per_step = train_flops_per_frame(cfg.model, cfg.data.row_frames) * frames_per_step
    preemption = Preemption()
    start = int(state.step)
    bar = tqdm(total=t_cfg.steps, initial=start, disable=not (main and progress), unit="step", dynamic_ncols=True)
    step, last = start, {}
    window_t, window_steps = time.perf_counter(), 0
    try:
        with jax.set_mesh(mesh):
            while step < t_cfg.steps:
                host = next(data)
                if tower is None and np.any(host.pieces.lengths):
                    raise DataError("the data holds continuous (user) audio but assets.audio_encoder is not set")
                if host.rows != local_rows:
                    raise DataError(f"pipeline gave {host.rows} rows, expected {local_rows}")
                state, metrics = compiled(state, tower_params, to_global_arrays(host, batch_sh))
                step += 1
                window_steps += 1
                frames_seen += frames_per_step
                if step % t_cfg.log_every == 0 or step == t_cfg.steps:
                    metrics = named_sources(jax.device_get(metrics), cfg)
                    dt = (time.perf_counter() - window_t) / window_steps
                    metrics.update(
                        step_s=dt,
                        frames_per_s=frames_per_step / dt,
                        mfu=flops_per_step / dt / (t_cfg.peak_flops * jax.device_count()),
                        frames_seen=frames_seen,
                    )
                    last = logs.write(step, metrics)
                    bar.set_postfix(loss=f"{last['loss']:.4f}", fps=f"{last['frames_per_s']:.0f}")
                    window_t, window_steps = time.perf_counter(), 0
                if step % t_cfg.eval_every == 0 or step == t_cfg.steps:
                    held_out = evaluate(cfg, eval_step, state.params, tower, vocab, batch_sh)
                    logs.write(step, {**held_out, **(eval_hook(step, state.params) if eval_hook else {})}, "eval/")
                if step % t_cfg.checkpoint_every == 0 or step == t_cfg.steps:
                    ckpts.save(step, state, data, cfg, frames_seen)
                bar.update(1)
                if preemption.agreed():
                    ckpts.save(step, state, data, cfg, frames_seen, force=True)
                    ckpts.wait()
                    log.warning("preempted: saved step %d", step)
                    return {"step": step, "preempted": True, **last}
        ckpts.wait()
    finally:
        preemption.restore()
        bar.close()
        ckpts.close()
        logs.plot_loss()
        logs.close()
    return {"step": step, "preempted": False, **last}


def named_sources(metrics: dict, cfg: Config) -> dict:
    """``source_loss`` / ``source_frames`` vectors -> ``source/<name>/loss`` and ``/frames``."""
    metrics = dict(metrics)
    loss, frames = metrics.pop("source_loss"), metrics.pop("source_frames")
    for i, source in enumerate(cfg.data.mixture):
        metrics[f"source/{source.name}/loss"] = loss[i]
        metrics[f"source/{source.name}/frames"] = frames[i]
    return metrics


def evaluate(cfg: Config, eval_step, params, tower: FrozenTower | None, vocab: Vocab, batch_sh: Batch) -> dict:
    """Mean metrics over ``train.eval_batches`` batches of each source's eval data (no
    guidance dropout), always the same batches: fresh pipelines from their start. Returns
    the metrics over all sources, plus ``<source>/loss`` etc. per source when there are
    several."""
    mixture, sums = cfg.data.mixture, {}
    for source in mixture:
        held_out = dataclasses.replace(source, prepared=source.eval_prepared or source.prepared)
        data_cfg = dataclasses.replace(cfg.data, prepared="", eval_prepared="", sources=(held_out,), workers=0)
        data = build_input(
            data_cfg,
            vocab,
            tokens_for(tower),
            mel_bins(tower),
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            train=False,
        )
        tower_params = None if tower is None else tower.params
        total = None
        for _ in range(cfg.train.eval_batches):
            batch = eval_step(params, tower_params, to_global_arrays(next(data), batch_sh))
            total = batch if total is None else jax.tree.map(jnp.add, total, batch)
        sums[source.name] = total
    overall = jax.tree.map(lambda *xs: sum(xs), *sums.values())
    metrics = {k: v for k, v in jax.device_get(stream_metrics(overall)).items() if not k.startswith("source_")}
    if len(mixture) > 1:
        for name, total in sums.items():
            per_source = jax.device_get(stream_metrics(total))
            metrics.update({f"{name}/{k}": v for k, v in per_source.items() if not k.startswith("source_")})
    return metrics
