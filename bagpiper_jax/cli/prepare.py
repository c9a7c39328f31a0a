"""``bagpiper-prepare --config CFG --manifest FILE --out DIR``: JSONL manifest -> ArrayRecord
shards of prepared examples + index (see :mod:`bagpiper_jax.data.prepare`). Run the same
command on every host of a pod: each prepares its share of the shards."""

from __future__ import annotations

import argparse
import json

import jax

from bagpiper_jax.cli.command import add_common_flags, run
from bagpiper_jax.config import load_config
from bagpiper_jax.data.prepare import prepare_manifest


def _prepare(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    report = prepare_manifest(
        cfg, args.manifest, args.out, process_index=jax.process_index(), process_count=jax.process_count()
    )
    if report is not None:
        print(json.dumps({k: report[k] for k in ("prepared", "skipped", "by_reason")}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bagpiper-prepare", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("overrides", nargs="*", help="config overrides, key.path=value")
    add_common_flags(parser)
    return run(parser.prog, parser.parse_args(argv), _prepare)


if __name__ == "__main__":
    raise SystemExit(main())
