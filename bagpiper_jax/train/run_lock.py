"""One trainer per run directory (:class:`~bagpiper_jax.locks.DirectoryLock` on ``run_dir``).

Process 0 of a run takes the lock for the run's lifetime; every process learns whether it
could, so a second multi-process run on the same directory stops on all its processes.
"""

from __future__ import annotations

import contextlib

import jax
import numpy as np
from jax.experimental import multihost_utils

from bagpiper_jax.locks import DirectoryLock, LockedError


@contextlib.contextmanager
def run_directory_lock(run_dir: str):
    """Holds ``run_dir``'s trainer lock while inside; raises :class:`LockedError` naming the
    holder when another live trainer has it."""
    lock = DirectoryLock(run_dir, "train", "run directory") if jax.process_index() == 0 else None
    error = None
    if lock is not None:
        try:
            lock.acquire()
        except LockedError as e:
            error = e
    if jax.process_count() > 1:
        refused = bool(np.any(multihost_utils.process_allgather(np.asarray(error is not None))))
        if refused and error is None:
            error = LockedError(f"{run_dir} is in use by another trainer (process 0 names it)")
    if error is not None:
        raise error
    try:
        yield
    finally:
        if lock is not None:
            lock.release()
