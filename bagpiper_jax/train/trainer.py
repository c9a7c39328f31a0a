"""The training loop behind ``bagpiper-train``.

Start-up: mesh from the config; the newest intact checkpoint of ``run_dir`` whose model
config matches (:meth:`~bagpiper_jax.checkpoint.run.RunCheckpoints.restore_latest`: train
state onto the current mesh, data-iterator state, frames seen), else the first state of
:mod:`bagpiper_jax.train.chaining` (params from ``train.init_from`` — an HF Qwen3
directory, a model checkpoint or an earlier stage's run — or random; fresh optimizer for
the ``train.trainable`` params); the train step compiled ahead of time with its
``memory_analysis()`` logged. Then per step: next packed batch -> global arrays -> jitted
step, which skips the update of a non-finite step (:mod:`bagpiper_jax.train.nonfinite`).
Every ``eval_every`` steps an eval pass; every ``checkpoint_every`` steps an async
checkpoint; every ``log_every`` steps: loss, per-stream loss/accuracy, lr, grad norm,
frames/s, MFU, the step-time split and goodput (:mod:`bagpiper_jax.train.step_timing`),
skipped steps and the trainable count to the progress bar, ``metrics.jsonl`` and
TensorBoard. ``train.profile_steps`` traces steps with ``jax.profiler``. SIGTERM
(preemption; :mod:`~bagpiper_jax.train.preemption`), from start-up on, is answered within
one step: the current step is saved unless it already is, the save committed, and the
command exits 0. One trainer runs per ``run_dir`` (:mod:`~bagpiper_jax.train.run_lock`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from bagpiper_jax.audio_encoder.frozen import FrozenTower, mel_bins, tokens_for
from bagpiper_jax.checkpoint.frozen_modules import load_frozen_tower
from bagpiper_jax.checkpoint.run import RunCheckpoints, checkpoint_directory
from bagpiper_jax.config import Config
from bagpiper_jax.data.pipeline import build_input
from bagpiper_jax.data.provenance import check_sources
from bagpiper_jax.data.shards import DataError
from bagpiper_jax.model.batch import Batch, to_global_arrays
from bagpiper_jax.model.flops import train_flops_per_frame
from bagpiper_jax.model.loss import stream_metrics
from bagpiper_jax.sharding import make_mesh, with_shardings
from bagpiper_jax.train.chaining import initial_state
from bagpiper_jax.train.metrics_log import MetricsLog
from bagpiper_jax.train.nonfinite import NonFiniteGuard
from bagpiper_jax.train.preemption import sigterm_requests_stop, stop_agreed
from bagpiper_jax.train.profiling import StepProfiler
from bagpiper_jax.train.program import build_program
from bagpiper_jax.train.run_lock import run_directory_lock
from bagpiper_jax.train.step import compiled_memory_gib
from bagpiper_jax.train.step_timing import StepTimer
from bagpiper_jax.train.summary import describe_start, run_summary
from bagpiper_jax.train.trainable import tree_bytes
from bagpiper_jax.vocab import Vocab

log = logging.getLogger(__name__)


EvalHook = Callable[[int, nnx.State], dict]
BatchHook = Callable[[int, Batch], Batch]


def train(
    cfg: Config, progress: bool = True, eval_hook: EvalHook | None = None, batch_hook: BatchHook | None = None
) -> dict:
    """Runs (or resumes) training to ``cfg.train.steps``; returns the run's summary
    (:func:`bagpiper_jax.train.summary.run_summary`).

    ``eval_hook(step, params)``, when given, adds its metrics to every eval pass
    (``bagpiper-train`` passes the ``train.eval_tasks`` scoring of
    :mod:`bagpiper_jax.eval.periodic`). ``batch_hook(step, batch)``, if given, replaces each
    host batch before step ``step`` uses it (a test seam, e.g. to inject a non-finite batch)."""
    with sigterm_requests_stop(), run_directory_lock(cfg.run_dir):
        return _train(cfg, progress, eval_hook, batch_hook)


def _train(cfg: Config, progress: bool, eval_hook: EvalHook | None, batch_hook: BatchHook | None) -> dict:
    check_sources(cfg)  # every prepared directory was made for this model and these assets
    timer = StepTimer()
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
    restored = ckpts.restore_latest(with_shardings(program.abstract, program.state_shardings), data, cfg.model)
    frames_seen = 0
    if restored is not None:
        latest, state, meta = restored
        frames_seen = meta["frames_seen"]
        log.info("resumed from %s/%d", ckpts.directory, latest)
    else:
        state = initial_state(cfg, program, data)
    local_rows = cfg.data.batch_rows // jax.process_count()
    tower_params = None if tower is None else tower.params
    batch_sh, eval_step = program.batch_shardings, program.eval_step
    if stop_agreed():  # SIGTERM during start-up: no step to lose, no compile to wait for
        ckpts.save(int(state.step), state, data, cfg, frames_seen)
        ckpts.wait()
        ckpts.close()
        return run_summary(cfg, ckpts, int(state.step), True, timer.run_seconds(), {"data": data.report}, {}, {})
    compiled, compile_s = program.compile()
    memory = compiled_memory_gib(compiled)
    counts = program.trainable.counts(program.abstract.params)
    logs = MetricsLog(cfg.run_dir, enabled=main)
    start_info = {
        "compiled_s": round(compile_s, 1),
        "memory_gib": memory,
        **counts,
        "optimizer_state_gib": round(tree_bytes(program.abstract.opt_state) / 2**30, 3),
        "data": data.report,
    }
    if main:
        (logs.run_dir / "config_resolved.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
        log.info("%s", describe_start(start_info, int(state.step), t_cfg.steps))
    frames_per_step = cfg.data.batch_rows * cfg.data.row_frames
    frozen = program.trainable.frozen_names
    flops_per_step = train_flops_per_frame(cfg.model, cfg.data.row_frames, frozen) * frames_per_step
    guard = NonFiniteGuard(t_cfg.max_bad_steps, cfg.run_dir, write=main)
    profiler = StepProfiler(t_cfg.profile_steps, logs.run_dir / "tensorboard", enabled=main)
    start = int(state.step)
    bar = tqdm(total=t_cfg.steps, initial=start, disable=not (main and progress), unit="step", dynamic_ncols=True)
    step, last, last_eval = start, {}, {}
    timer.restart_window()
    try:
        with jax.set_mesh(mesh):
            while step < t_cfg.steps:
                if stop_agreed():  # each step is waited for: SIGTERM is answered within a step
                    ckpts.save(step, state, data, cfg, frames_seen)  # unless this step is saved already
                    ckpts.wait()
                    log.warning("preempted: checkpoint at step %d", step)
                    return run_summary(cfg, ckpts, step, True, timer.run_seconds(), start_info, last, last_eval)
                profiler.before(step + 1)
                with timer.phase("data_wait"):
                    position = data.get_state()  # before the batch: where to find it again
                    host = next(data)
                if tower is None and np.any(host.pieces.lengths):
                    raise DataError("the data holds continuous (user) audio but assets.audio_encoder is not set")
                if host.rows != local_rows:
                    raise DataError(f"pipeline gave {host.rows} rows, expected {local_rows}")
                if batch_hook is not None:
                    host = batch_hook(step + 1, host)
                with timer.phase("host_to_device"):
                    batch = jax.block_until_ready(to_global_arrays(host, batch_sh))
                with timer.phase("compute") as compute:
                    state, metrics = jax.block_until_ready(compiled(state, tower_params, batch))
                step += 1
                frames_seen += frames_per_step
                finite = bool(metrics.pop("finite"))
                timer.step_done(compute, applied=finite)
                profiler.after(step)
                guard.record(step, finite, metrics, position)
                if step % t_cfg.eval_every == 0 or step == t_cfg.steps:
                    with timer.phase("eval"):
                        held_out = evaluate(cfg, eval_step, state.params, tower, vocab, batch_sh)
                        scored = eval_hook(step, state.params) if eval_hook else {}
                        last_eval = logs.write(step, {**held_out, **scored}, "eval/")
                if step % t_cfg.checkpoint_every == 0 or step == t_cfg.steps:
                    with timer.phase("checkpoint"):
                        ckpts.save(step, state, data, cfg, frames_seen)
                if step % t_cfg.log_every == 0 or step == t_cfg.steps:
                    metrics = named_sources(jax.device_get(metrics), cfg)
                    window = timer.window()
                    metrics.update(
                        window,
                        frames_per_s=frames_per_step / window["step_s"],
                        mfu=flops_per_step / window["step_s"] / (t_cfg.peak_flops * jax.device_count()),
                        frames_seen=frames_seen,
                        **guard.window(),
                        trainable_params=counts["trainable_params"],
                    )
                    last = logs.write(step, metrics)
                    bar.set_postfix(loss=f"{last['loss']:.4f}", fps=f"{last['frames_per_s']:.0f}")
                bar.update(1)
        ckpts.wait()
    finally:
        profiler.stop()
        bar.close()
        ckpts.close()
        logs.plot_loss()
        logs.close()
    return run_summary(cfg, ckpts, step, False, timer.run_seconds(), start_info, last, last_eval)


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
