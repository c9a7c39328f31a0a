"""``bagpiper-convert``: weight conversions, one subcommand per source format.

Each module in ``SUBCOMMAND_MODULES`` defines ``register(subparsers)``, which adds its
subcommand with ``set_defaults(run=callable(args))``.
"""
from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMAND_MODULES: tuple[str, ...] = (
    "bagpiper_jax.audio_encoder.hf_import",
    "bagpiper_jax.codec.hf_import",
    "bagpiper_jax.convert.commands",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bagpiper-convert", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    args = parser.parse_args(argv)
    return args.run(args) or 0


if __name__ == "__main__":
    sys.exit(main())
