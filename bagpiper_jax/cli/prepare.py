"""``bagpiper-prepare --config CFG --manifest FILE|DIR|GLOB --out DIR``: manifest parts ->
ArrayRecord shards of prepared examples + index (see :mod:`bagpiper_jax.data.prepare`). Run
the same command on every host of a pod (``BAGPIPER_*`` environment, as for
``bagpiper-train``): each prepares its share of the work units. A re-run with the same
inputs continues where the last stopped; other inputs are refused unless ``--overwrite``.

``bagpiper-prepare --migrate DIR [--config CFG]`` rewrites a directory prepared in the
previous format (per-example index) in place."""

from __future__ import annotations

import argparse
import json

import jax

from bagpiper_jax.cli.command import add_common_flags, run
from bagpiper_jax.config import load_config
from bagpiper_jax.data.prepare import prepare_manifest
from bagpiper_jax.data.shards import migrate_v1


def _prepare(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    if args.migrate:
        index = migrate_v1(args.migrate, cfg.data.piece_frames)
        print(json.dumps({"migrated": args.migrate, "shards": len(index["shards"]), "examples": index["examples"]}))
        return 0
    report = prepare_manifest(
        cfg,
        args.manifest,
        args.out,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        overwrite=args.overwrite,
    )
    if report is not None:
        print(json.dumps({k: report[k] for k in ("prepared", "skipped", "by_reason")}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bagpiper-prepare", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="run config (required to prepare; for --migrate: data.piece_frames)")
    parser.add_argument("--manifest", help="JSONL manifest: a file, a directory of *.jsonl parts or a glob")
    parser.add_argument("--out", help="output directory")
    parser.add_argument("--migrate", metavar="DIR", help="rewrite a directory prepared in the previous format")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start --out afresh when it holds a preparation from other inputs (default: refuse)",
    )
    parser.add_argument("overrides", nargs="*", help="config overrides, key.path=value")
    add_common_flags(parser)
    args = parser.parse_intermixed_args(argv)
    if not args.migrate and not (args.config and args.manifest and args.out):
        parser.error("give --config, --manifest and --out (or --migrate DIR)")
    return run(parser.prog, args, _prepare)


if __name__ == "__main__":
    raise SystemExit(main())
