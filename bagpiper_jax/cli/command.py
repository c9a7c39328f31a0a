"""What every ``bagpiper-*`` command shares: the common flags, logging, platform choice,
multi-process start-up and one-line errors.

A command's body runs under :func:`run`: the project's own errors
(:class:`~bagpiper_jax.errors.BagpiperError`) print ``<prog>: <message>`` on one line and
exit 1; ``--debug`` shows the traceback instead.

Logging is quiet by default: this library's status messages (INFO) and every library's
warnings. ``--verbose`` (or ``BAGPIPER_LOG=info``/``debug``) also shows the INFO logs of
absl, Orbax, JAX and Grain.
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import jax
from absl import logging as absl_logging

from bagpiper_jax.distributed import initialize_from_env
from bagpiper_jax.errors import BagpiperError

TPU_PCI_VENDOR = "0x1ae0"  # Google: the vendor id of TPU chips on a TPU VM's PCI bus


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("--verbose", action="store_true", help="also show other libraries' INFO logs")


def configure_logging(verbose: bool = False) -> None:
    """This library's INFO messages, everyone's warnings; with ``verbose`` (or
    ``BAGPIPER_LOG``) every library's logs at that level."""
    named = os.environ.get("BAGPIPER_LOG", "").upper()
    if named and named not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise BagpiperError(f"BAGPIPER_LOG={named.lower()}: expected debug, info, warning or error")
    level = logging.getLevelName(named) if named else logging.INFO if verbose else logging.WARNING
    detail = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s" if level > logging.INFO else detail, "%H:%M:%S"))
    root = logging.getLogger()
    for old in root.handlers[:]:  # absl's (Orbax logging before any setup), basicConfig's, ours
        if old is absl_logging.get_absl_handler() or type(old) in (logging.StreamHandler, _StderrHandler):
            root.removeHandler(old)
    root.addHandler(handler)  # other handlers (files, a test's log capture) stay
    root.setLevel(level)
    logging.getLogger("bagpiper_jax").setLevel(min(level, logging.INFO))
    absl_logging.set_verbosity(absl_logging.converter.standard_to_absl(level))


class _StderrHandler(logging.StreamHandler):
    """Writes to the current ``sys.stderr`` (which progress bars and tests may replace)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler's constructor sets it; the property always follows sys.stderr
        pass


def _tpu_visible() -> bool:
    return any(Path(v).read_text().strip() == TPU_PCI_VENDOR for v in glob.glob("/sys/bus/pci/devices/*/vendor"))


def _gpu_visible() -> bool:
    return Path("/proc/driver/nvidia").exists() or bool(glob.glob("/dev/nvidia[0-9]*"))


def choose_platform() -> None:
    """On a host with neither TPU nor NVIDIA devices, JAX runs on the CPU without first trying
    an installed libtpu (whose failed start prints several lines). ``JAX_PLATFORMS`` wins."""
    if "JAX_PLATFORMS" not in os.environ and not _tpu_visible() and not _gpu_visible():
        os.environ["JAX_PLATFORMS"] = "cpu"  # for child processes (input workers)
        jax.config.update("jax_platforms", "cpu")


def run(
    prog: str,
    args: argparse.Namespace,
    body: Callable[[argparse.Namespace], int | None],
    distributed: bool = True,
) -> int:
    """Sets up logging, the platform and ``jax.distributed`` from the environment, runs
    ``body(args)`` and turns the project's errors into one line on stderr; returns the exit
    status."""
    try:
        configure_logging(args.verbose)
        choose_platform()
        if distributed:
            initialize_from_env()
        return body(args) or 0
    except (BagpiperError, FileNotFoundError) as e:
        if args.debug:
            raise
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
