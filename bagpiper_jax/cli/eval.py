"""``bagpiper-eval``: generate and score an eval manifest (docs/evaluation.md).

    bagpiper-eval --checkpoint CKPT --config CFG --eval FILE.jsonl [--out DIR] [key=value ...]
    (assets.clap=DIR: an HF ClapModel for text_to_audio; assets.asr=DIR: an HF ASR model for tts)

``CKPT``: a model checkpoint, a run directory (latest step) or ``<run>/checkpoints/<step>``.
Writes ``DIR/results.jsonl`` (every item: input, output, scores or its error),
``DIR/summary.json`` and ``DIR/wavs/`` (default ``DIR``: ``eval/<checkpoint>-<manifest>``),
then prints the table. With a demo config (``data.demo: true``) a missing ``--eval`` file is
made from the demo corpus's held-out split first.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax

from bagpiper_jax.cli.command import add_common_flags, run
from bagpiper_jax.config import load_config
from bagpiper_jax.eval.demo import ensure_demo_eval
from bagpiper_jax.eval.manifest import EvalManifestError, read_eval_manifest
from bagpiper_jax.eval.runner import MetricModels, evaluate, format_table
from bagpiper_jax.generate import Generator
from bagpiper_jax.sharding import make_mesh


def _eval(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    if cfg.data.demo:
        ensure_demo_eval(cfg, args.eval)
    items, errors = read_eval_manifest(args.eval, args.limit)
    if not items and not errors:
        raise EvalManifestError(f"eval manifest {args.eval} holds no items")
    checkpoint = Path(args.checkpoint)
    out = Path(args.out or f"eval/{checkpoint.absolute().name}-{Path(args.eval).stem}")
    devices = jax.devices()[: args.devices] if args.devices else None
    generator = Generator.from_checkpoint(checkpoint, cfg, make_mesh(cfg.mesh, devices))
    models = MetricModels.load(cfg, {i.task for i in items})
    meta = {"checkpoint": str(checkpoint), "manifest": str(args.eval)}
    summary = evaluate(
        generator, items, errors, models, out, args.batch, args.seed, progress=not args.no_progress, meta=meta
    )
    print(format_table(summary))
    print(json.dumps({"out": str(out), "items": summary["items"], "errors": summary["errors"]}), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bagpiper-eval", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="model checkpoint, run directory or run step")
    parser.add_argument("--config", required=True, help="run config YAML (the model must match the checkpoint)")
    parser.add_argument("--eval", required=True, help="eval manifest JSONL")
    parser.add_argument("--out", help="output directory (default eval/<checkpoint>-<manifest>)")
    parser.add_argument("--batch", type=int, default=8, help="prompts generated together (default 8)")
    parser.add_argument("--limit", type=int, default=0, help="evaluate the first N lines only")
    parser.add_argument("--seed", type=int, default=None, help="PRNG seed (default generate.seed)")
    parser.add_argument("--devices", type=int, default=0, help="use the first N devices (default: all)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("overrides", nargs="*", help="config overrides, key.path=value")
    add_common_flags(parser)
    args = parser.parse_args(argv)
    if args.batch <= 0:
        parser.error("--batch must be positive")
    return run(parser.prog, args, _eval)


if __name__ == "__main__":
    raise SystemExit(main())
