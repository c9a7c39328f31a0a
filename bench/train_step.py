"""Step time, frames/s and MFU of the real train step (``bagpiper_jax.train.step``) for a
config; one JSON line.

The step is exactly what ``bagpiper-train`` runs: multi-stream embedding, packed rows (two
segments each) with segment-isolated attention, chunked stream-0 loss, streams 1-7
audio-range loss, backward, gradient accumulation per ``train.grad_accum``, global-norm
clip and AdamW with the config's schedule, donated sharded state, compiled ahead of time.
The batch is synthetic (``bench/synthetic.py``), so no data or encoder is read;
continuous-audio pieces are left empty. MFU = model FLOPs (``train_flops_per_frame``,
attention and the heads included) x frames/s / (peak per device x devices).

    python bench/train_step.py --config configs/tiny.yaml --seq 256 --rows 8 --peak 1e12    # CPU
    python bench/train_step.py --config configs/8b.yaml --layers 8 --seq 4096 --rows 1 runtime.attention=cudnn  # GPU
"""

import argparse
import json
import time

import jax
import numpy as np
from synthetic import synthetic_batch

from bagpiper_jax.config import load_config
from bagpiper_jax.model.batch import Batch
from bagpiper_jax.model.create import init_model
from bagpiper_jax.model.flops import train_flops_per_frame
from bagpiper_jax.sharding import make_mesh
from bagpiper_jax.train.program import build_program
from bagpiper_jax.train.state import init_state
from bagpiper_jax.train.step import compiled_memory_gib
from bagpiper_jax.vocab import Vocab


def parse_args(argv=None, **defaults):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/tiny.yaml")
    p.add_argument("--layers", type=int, default=0, help="override model.layers")
    p.add_argument("--seq", type=int, default=0, help="frames per row (default: data.row_frames)")
    p.add_argument("--rows", type=int, default=0, help="rows per device (default: data.batch_rows / devices)")
    p.add_argument("--steps", type=int, default=8, help="timed steps (after one warm-up step)")
    p.add_argument("--peak", type=float, default=0.0, help="peak FLOP/s per device (default: train.peak_flops)")
    p.add_argument("overrides", nargs="*", help="config overrides, key.path=value")
    p.set_defaults(**defaults)
    return p.parse_args(argv)


def host_batch(cfg, example: Batch) -> Batch:
    """A batch of the compiled shapes (``example``: the program's abstract batch) of
    synthetic packed rows; the continuous-audio pieces are zero (no pieces)."""
    pieces = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), example.pieces)
    return synthetic_batch(Vocab.from_config(cfg.model), example.rows, cfg.data.row_frames, cfg.seed, pieces)


def measure(args) -> dict:
    devices = jax.device_count()
    overrides = (
        [f"model.layers={args.layers}"] * bool(args.layers)
        + [f"data.row_frames={args.seq}"] * bool(args.seq)
        + [f"data.batch_rows={args.rows * devices}"] * bool(args.rows)
        + list(args.overrides)
    )
    cfg = load_config(args.config, overrides)
    if cfg.data.row_frames > cfg.runtime.max_frames:
        cfg = load_config(args.config, [*overrides, f"runtime.max_frames={cfg.data.row_frames}"])
    peak = args.peak or cfg.train.peak_flops
    mesh = make_mesh(cfg.mesh)
    program = build_program(cfg, mesh)
    rows = cfg.data.batch_rows
    state = init_state(
        init_model(cfg.model, cfg.runtime, mesh, cfg.mesh.rules, cfg.seed)[1], program.tx, program.state_shardings
    )
    batch = jax.device_put(host_batch(cfg, program.example), program.batch_shardings)
    compiled, compile_s = program.compile()
    with jax.set_mesh(mesh):
        state, metrics = compiled(state, None, batch)  # warm-up
        jax.block_until_ready(metrics)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            state, metrics = compiled(state, None, batch)
        jax.block_until_ready(metrics)
        step_s = (time.perf_counter() - t0) / args.steps
    frames = rows * cfg.data.row_frames
    flops = train_flops_per_frame(cfg.model, cfg.data.row_frames) * frames
    stats = jax.devices()[0].memory_stats() or {}
    m, r = cfg.model, cfg.runtime
    return {
        "what": "bagpiper_train_step",
        "device": jax.devices()[0].device_kind,
        "devices": devices,
        "mesh": dict(mesh.shape),
        "layers": m.layers,
        "hidden": m.hidden,
        "seq": cfg.data.row_frames,
        "rows_per_device": rows / devices,
        "grad_accum": cfg.train.grad_accum,
        "remat": r.remat,
        "attention": r.attention,
        "dtype": r.dtype,
        "loss_chunk": r.loss_chunk,
        "compile_s": round(compile_s, 1),
        "compiled_memory_gib": compiled_memory_gib(compiled),
        "step_s": round(step_s, 4),
        "frames_per_s": round(frames / step_s, 1),
        "mfu": round(flops / step_s / (peak * devices), 4),
        "peak_flops_per_device": peak,
        "peak_memory_gib": round(stats.get("peak_bytes_in_use", 0) / 2**30, 2),
        "loss": float(metrics["loss"]),
    }


def main(argv=None, **defaults):
    print(json.dumps(measure(parse_args(argv, **defaults))), flush=True)


if __name__ == "__main__":
    main()
