"""What every ``bagpiper-*`` command shares: the common flags, logging, multi-process
start-up and one-line errors.

A command's body runs under :func:`run`: the project's own errors
(:class:`~bagpiper_jax.errors.BagpiperError`) print ``<prog>: <message>`` on one line and
exit 1; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from bagpiper_jax.distributed import initialize_from_env
from bagpiper_jax.errors import BagpiperError


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")


def run(
    prog: str,
    args: argparse.Namespace,
    body: Callable[[argparse.Namespace], int | None],
    level: int = logging.WARNING,
    distributed: bool = True,
) -> int:
    """Sets up logging (and ``jax.distributed`` from the environment), runs ``body(args)``
    and turns the project's errors into one line on stderr; returns the exit status."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if distributed:
            initialize_from_env()
        return body(args) or 0
    except (BagpiperError, FileNotFoundError) as e:
        if args.debug:
            raise
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
