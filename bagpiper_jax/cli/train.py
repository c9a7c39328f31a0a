"""``bagpiper-train --config CFG [key=value ...]``: train or resume a run (see
:mod:`bagpiper_jax.train.trainer`). With ``data.demo: true`` (``configs/demo.yaml``) the
demo corpus, its assets and prepared shards are built first where missing. ``train.eval_tasks``
(eval manifests) are generated and scored at every eval pass (:mod:`bagpiper_jax.eval.periodic`).

At the end it prints a short summary (losses, speed, where the checkpoint and logs are,
the next commands) and writes it to ``<run_dir>/summary.json``; ``--json`` prints that JSON
instead."""

from __future__ import annotations

import argparse
import json

import jax

from bagpiper_jax.cli.command import add_common_flags, run
from bagpiper_jax.config import load_config
from bagpiper_jax.data.demo import demo_clip, ensure_demo_prepared
from bagpiper_jax.eval.periodic import periodic_eval
from bagpiper_jax.train.preemption import sigterm_requests_stop
from bagpiper_jax.train.summary import describe_end, write_summary
from bagpiper_jax.train.trainer import train


def _train(args: argparse.Namespace) -> int:
    with sigterm_requests_stop():  # from start-up on: the trainer sees a SIGTERM sent while the demo is built
        cfg = load_config(args.config, args.overrides)
        if cfg.data.demo:
            ensure_demo_prepared(cfg)
        summary = train(cfg, progress=not args.no_progress, eval_hook=periodic_eval(cfg))
    if jax.process_index() == 0:
        write_summary(summary)
        clip = demo_clip(cfg) if cfg.data.demo else "CLIP.wav"
        print(json.dumps(summary) if args.json else describe_end(summary, args.config, clip), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bagpiper-train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the end-of-run summary as JSON")
    parser.add_argument("overrides", nargs="*", help="config overrides, key.path=value")
    add_common_flags(parser)
    return run(parser.prog, parser.parse_intermixed_args(argv), _train)


if __name__ == "__main__":
    raise SystemExit(main())
