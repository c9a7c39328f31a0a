"""AOT-compile the full train step for a TPU pod slice from a CPU host; print one JSON line.

The slice is described by libtpu (``pip install "jax[tpu]==<jax version>"``), no TPU is
needed. The step is what ``bagpiper-train`` runs for the config (mesh, data.batch_rows x
data.row_frames, remat, attention kernel, optimizer, train.trainable), with the frozen
Qwen3-Omni audio tower inside unless ``--no-encoder``. Reports the compile time, the
trainable / frozen parameter counts, the optimizer state's share per chip and the per-device
memory from ``memory_analysis()`` (arguments, outputs, temporaries, aliased, total) against
the chip's HBM.

``--plan`` searches remat policies and micro-batch sizes instead
(:mod:`bagpiper_jax.train.memory_plan`, after MaxText's estimator): the largest per-chip
batch that fits with 10% of HBM free per policy, its estimated MFU from XLA's cost analysis
and the ``data.batch_rows`` / ``train.grad_accum`` that keep the config's global batch.

    python bench/compile_tpu.py --config configs/8b_v5p256.yaml --topology v5p:4x4x8    # v5p-256: 128 chips
    python bench/compile_tpu.py --config configs/8b_v6e256.yaml --topology v6e:16x16    # v6e-256: 256 chips
    python bench/compile_tpu.py --config configs/8b_stage1_warmup.yaml --topology v6e:16x16 mesh.tensor=2
    python bench/compile_tpu.py --config configs/8b_v5p256.yaml --topology v5p:4x4x8 --plan --remat full,dots
"""

import argparse
import json
import logging
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the host compiles; the TPU devices are compile-only

from bagpiper_jax.config import load_config
from bagpiper_jax.model.flops import train_flops_per_frame
from bagpiper_jax.train.aot import HBM_GIB, compile_step, device_memory_gib, per_device_gib, tpu_devices
from bagpiper_jax.train.memory_plan import REMAT_LEAST_MEMORY_FIRST, plan


def compile_report(cfg, devices, encoder: bool = True) -> dict:
    """AOT compile of ``cfg``'s full train step on ``devices`` (real or compile-only), with
    the frozen Qwen3-Omni tower unless ``encoder`` is False: the figures of one JSON line."""
    program, compiled, seconds = compile_step(cfg, devices, encoder)
    m, r, d = cfg.model, cfg.runtime, cfg.data
    return {
        "device_kind": devices[0].device_kind,
        "chips": len(devices),
        "mesh": dict(program.mesh.shape),
        "row_frames": d.row_frames,
        "global_rows": d.batch_rows,
        "global_frames": d.batch_rows * d.row_frames,
        "grad_accum": cfg.train.grad_accum,
        "layers": m.layers,
        "remat": r.remat,
        "attention": r.attention,
        "encoder": encoder,
        "train_flops_per_frame": train_flops_per_frame(m, d.row_frames, program.trainable.frozen_names),
        **program.trainable.counts(program.abstract.params),
        "optimizer_state_gib_per_device": per_device_gib(program.abstract.opt_state, program.state_shardings.opt_state),
        "compile_s": round(seconds, 1),
        "per_device_memory": device_memory_gib(compiled),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--topology", required=True, help='libtpu topology name, e.g. "v5p:4x4x8", "v6e:16x16"')
    p.add_argument("--no-encoder", action="store_true", help="leave the frozen audio tower out of the step")
    p.add_argument("--plan", action="store_true", help="search remat policies and micro-batch sizes")
    p.add_argument(
        "--remat",
        default=",".join(REMAT_LEAST_MEMORY_FIRST),
        help="--plan: policies to try, least memory first (default: all)",
    )
    p.add_argument("--max-rows-per-shard", type=int, help="--plan: largest micro-batch tried (rows per shard)")
    p.add_argument("overrides", nargs="*", help="config overrides, key.path=value")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    devices = tpu_devices(args.topology)
    head = {"config": args.config, "overrides": args.overrides, "topology": args.topology}
    hbm = {"hbm_per_chip_gib": HBM_GIB.get(devices[0].device_kind)}
    if not args.plan:
        report = compile_report(cfg, devices, encoder=not args.no_encoder)
        print(json.dumps({"what": "compile_tpu_train_step", **head, **report, **hbm}), flush=True)
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    found = plan(cfg, devices, not args.no_encoder, tuple(args.remat.split(",")), args.max_rows_per_shard)
    result = {
        "what": "plan_tpu_train_step",
        **head,
        "device_kind": devices[0].device_kind,
        "chips": len(devices),
        **hbm,
        "budget_gib": found.budget_gib,
        "row_frames": cfg.data.row_frames,
        "global_rows": cfg.data.batch_rows,
        "largest": found.largest,
        "best": found.best,
        "frontier": found.frontier,
        "searched": found.searched,
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
