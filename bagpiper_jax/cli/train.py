"""``bagpiper-train --config CFG [key=value ...]``: train or resume a run (see
:mod:`bagpiper_jax.train.trainer`). With ``data.demo: true`` (``configs/demo.yaml``) the
demo corpus, its assets and prepared shards are built first where missing. ``train.eval_tasks``
(eval manifests) are generated and scored at every eval pass (:mod:`bagpiper_jax.eval.periodic`)."""

from __future__ import annotations

import argparse
import json
import logging

from bagpiper_jax.cli.command import add_common_flags, run
from bagpiper_jax.config import load_config
from bagpiper_jax.data.demo import ensure_demo_prepared
from bagpiper_jax.eval.periodic import periodic_eval
from bagpiper_jax.train.trainer import train


def _train(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    if cfg.data.demo:
        ensure_demo_prepared(cfg)
    summary = train(cfg, progress=not args.no_progress, eval_hook=periodic_eval(cfg))
    print(json.dumps({k: v for k, v in summary.items() if not isinstance(v, list)}), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bagpiper-train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs and JSON only)")
    parser.add_argument("overrides", nargs="*", help="config overrides, key.path=value")
    add_common_flags(parser)
    return run(parser.prog, parser.parse_args(argv), _train, level=logging.INFO)


if __name__ == "__main__":
    raise SystemExit(main())
