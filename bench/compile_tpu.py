"""AOT-compile the full train step for a TPU pod slice from a CPU host; print one JSON line.

The slice is described by libtpu (``pip install "jax[tpu]==<jax version>"``), no TPU is
needed. The step is what ``bagpiper-train`` runs for the config (mesh, data.batch_rows x
data.row_frames, remat, attention kernel, optimizer), with the frozen Qwen3-Omni audio
tower inside unless ``--no-encoder``. Reports the compile time and per-device memory from
``memory_analysis()`` (arguments, outputs, temporaries, aliased, total) against the chip's HBM.

    python bench/compile_tpu.py --config configs/8b_v5p256.yaml --topology v5p:4x4x8    # v5p-256: 128 chips
    python bench/compile_tpu.py --config configs/8b_v6e256.yaml --topology v6e:16x16    # v6e-256: 256 chips
    python bench/compile_tpu.py --config configs/8b_v6e256.yaml --topology v6e:16x16 runtime.remat=dots
"""

import argparse
import json
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the host compiles; the TPU devices are compile-only

from bagpiper_jax.audio_encoder.frozen import FrozenTower
from bagpiper_jax.config import load_config
from bagpiper_jax.model.flops import train_flops_per_frame
from bagpiper_jax.sharding import make_mesh
from bagpiper_jax.train.aot import device_memory_gib, per_device_gib, tpu_devices
from bagpiper_jax.train.program import build_program

# HBM per chip (GiB, the figures Google publishes) by jax device_kind.
HBM_GIB = {"TPU v4": 32, "TPU v5 lite": 16, "TPU v5": 95, "TPU v6 lite": 32}


def compile_report(cfg, devices, encoder: bool = True) -> dict:
    """AOT compile of ``cfg``'s full train step on ``devices`` (real or compile-only), with
    the frozen Qwen3-Omni tower unless ``encoder`` is False: the figures of one JSON line."""
    mesh = make_mesh(cfg.mesh, devices)
    tower = FrozenTower.abstract(mesh, cfg.mesh.rules, dtype=cfg.runtime.encoder_dtype) if encoder else None
    program = build_program(cfg, mesh, tower)
    compiled, seconds = program.compile()
    m, r, d = cfg.model, cfg.runtime, cfg.data
    frozen = {".".join(p) for p in program.trainable.frozen_paths}
    return {
        "device_kind": devices[0].device_kind,
        "chips": len(devices),
        "mesh": dict(mesh.shape),
        "row_frames": d.row_frames,
        "global_rows": d.batch_rows,
        "global_frames": d.batch_rows * d.row_frames,
        "grad_accum": cfg.train.grad_accum,
        "layers": m.layers,
        "remat": r.remat,
        "attention": r.attention,
        "encoder": encoder,
        "train_flops_per_frame": train_flops_per_frame(m, d.row_frames, frozen),
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
    p.add_argument("overrides", nargs="*", help="config overrides, key.path=value")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    report = compile_report(cfg, tpu_devices(args.topology), encoder=not args.no_encoder)
    print(
        json.dumps(
            {
                "what": "compile_tpu_train_step",
                "config": args.config,
                "overrides": args.overrides,
                "topology": args.topology,
                **report,
                "hbm_per_chip_gib": HBM_GIB.get(report["device_kind"]),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
