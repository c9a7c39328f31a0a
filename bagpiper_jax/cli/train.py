"""``bagpiper-train --config CFG [key=value ...]``: train or resume a run (see
:mod:`bagpiper_jax.train.trainer`). With the demo config, the demo corpus and its prepared
shards are built first if missing."""
from __future__ import annotations

import argparse
import json
import logging

from bagpiper_jax.distributed import initialize_from_env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bagpiper-train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs and JSON only)")
    parser.add_argument("overrides", nargs="*", help="config overrides, key.path=value")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    initialize_from_env()
    from bagpiper_jax.config import load_config
    from bagpiper_jax.data.demo import ensure_demo_prepared
    from bagpiper_jax.train.trainer import train
    cfg = load_config(args.config, args.overrides)
    if cfg.data.prepared.rstrip("/").endswith("demo/prepared"):
        ensure_demo_prepared(cfg)
    summary = train(cfg, progress=not args.no_progress)
    print(json.dumps({k: v for k, v in summary.items() if not isinstance(v, list)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
