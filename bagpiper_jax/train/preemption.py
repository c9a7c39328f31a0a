"""SIGTERM as a request to checkpoint and stop (preemption), from start-up on.

Inside :func:`sigterm_requests_stop` a SIGTERM only sets a flag; the trainer checks it
before every step (and once before compiling), saves the current step if it is not saved
yet and returns, so the command exits 0 after a complete checkpoint. Nested uses share the
one flag, so a signal that arrives while ``bagpiper-train`` is still building the demo
corpus is seen by the trainer.
"""

from __future__ import annotations

import contextlib
import signal

import jax
import numpy as np
from jax.experimental import multihost_utils

_flag = {"depth": 0, "requested": False, "previous": None}


def _handle(signum, frame):
    _flag["requested"] = True


@contextlib.contextmanager
def sigterm_requests_stop():
    """SIGTERM sets the stop flag instead of killing the process while inside."""
    if _flag["depth"] == 0:
        _flag["requested"] = False
        _flag["previous"] = signal.signal(signal.SIGTERM, _handle)
    _flag["depth"] += 1
    try:
        yield
    finally:
        _flag["depth"] -= 1
        if _flag["depth"] == 0:
            signal.signal(signal.SIGTERM, _flag["previous"])


def stop_requested() -> bool:
    """Whether this process got SIGTERM."""
    return _flag["requested"]


def stop_agreed() -> bool:
    """Whether any process got SIGTERM (every process gets the same answer)."""
    if jax.process_count() == 1:
        return stop_requested()
    return bool(np.any(multihost_utils.process_allgather(np.asarray(stop_requested()))))
