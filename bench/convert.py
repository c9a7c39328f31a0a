"""Seconds and peak RSS of ``bagpiper-convert from-torch`` and ``to-torch`` on a synthetic
~1.3B-parameter Bagpiper (8B vocabulary and widths halved: hidden 2048, 12 layers, MLP 6144;
float32, ~5 GB) on this machine's CPU. One JSON line.

Each stage runs in its own process and reports its own peak RSS (``ru_maxrss``, which
counts the pages of memory-mapped inputs while they are mapped), which must stay well
under two copies of the model (``model_bytes``). The synthetic reference checkpoint is
written first (not measured): sharded safetensors, or with ``--source pt`` one ``torch.save``
file (zip format: ``from-torch`` memory-maps it).

    python bench/convert.py [--layers 12] [--source safetensors|pt] [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from bagpiper_jax.config import Config, ModelConfig, to_dict


def bench_config(layers: int) -> Config:
    return Config(model=ModelConfig(hidden=2048, layers=layers, heads=16, kv_heads=8, head_dim=128, mlp=6144))


def stage(name: str, workdir: Path, layers: int, source: str = "safetensors") -> dict:
    """Runs one stage in this process; returns seconds and peak RSS."""
    from bagpiper_jax.checkpoint.safetensors_writer import write_safetensors
    from bagpiper_jax.convert import commands, torch_layout

    cfg = bench_config(layers)
    t0 = time.perf_counter()
    if name == "synthesize":
        shapes = torch_layout.model_param_shapes(cfg.model, cfg.runtime)
        specs = torch_layout.model_specs(torch_layout.model_entries(cfg.model), shapes, np.float32)
        rng = np.random.default_rng(0)
        tensors = ((s.name, rng.standard_normal(s.shape, np.float32)) for s in specs)
        if source == "pt":
            import torch

            torch.save({name: torch.from_numpy(t) for name, t in tensors}, workdir / "model.pt")
        else:
            write_safetensors(workdir / "torch", specs, tensors, commands.parse_size("2GB"))
        (workdir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg)))
        result = {"model_bytes": sum(s.nbytes for s in specs), "params": sum(s.nbytes for s in specs) // 4}
    elif name == "from_torch":
        torch_path = workdir / ("model.pt" if source == "pt" else "torch")
        commands.from_torch(torch_path, workdir / "config.yaml", workdir / "ckpt", progress=False)
        result = {}
    else:
        commands.to_torch(
            workdir / "ckpt", workdir / "torch_out", max_shard_size=commands.parse_size("2GB"), progress=False
        )
        result = {}
    return {
        **result,
        "seconds": round(time.perf_counter() - t0, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument(
        "--source",
        choices=("safetensors", "pt"),
        default="safetensors",
        help="format of the reference checkpoint that from-torch reads",
    )
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the written checkpoints")
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        print(json.dumps(stage(args.stage, args.workdir, args.layers, args.source)))
        return
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_convert_"))
    results = {}
    try:
        for name in ("synthesize", "from_torch", "to_torch"):
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--stage",
                    name,
                    "--workdir",
                    str(workdir),
                    "--layers",
                    str(args.layers),
                    "--source",
                    args.source,
                ],
                capture_output=True,
                text=True,
            )
            if out.returncode:
                sys.exit(f"stage {name} failed:\n{out.stderr[-4000:]}")
            results[name] = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    model_gb = results["synthesize"]["model_bytes"] / 2**30
    print(
        json.dumps(
            {
                "bench": "convert",
                "source": args.source,
                "params": results["synthesize"]["params"],
                "model_gb_fp32": round(model_gb, 2),
                "from_torch_s": results["from_torch"]["seconds"],
                "from_torch_peak_rss_gb": results["from_torch"]["peak_rss_gb"],
                "to_torch_s": results["to_torch"]["seconds"],
                "to_torch_peak_rss_gb": results["to_torch"]["peak_rss_gb"],
                "peak_rss_over_model": round(
                    max(results[s]["peak_rss_gb"] for s in ("from_torch", "to_torch")) / model_gb, 2
                ),
            }
        )
    )


if __name__ == "__main__":
    main()
