"""``train.profile_steps=[first, last]``: a ``jax.profiler`` trace of those steps.

The trace starts before step ``first`` runs (or the first step after a resume, if that
falls in the range) and stops once step ``last`` has finished on the device. It is written
under ``<run_dir>/tensorboard/plugins/profile/<timestamp>/`` (by process 0), where
TensorBoard's profile plugin finds it next to the run's scalars:
``tensorboard --logdir <run_dir>/tensorboard``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import jax

log = logging.getLogger(__name__)


class StepProfiler:
    """Starts and stops the trace around the configured steps (no-op without any)."""

    def __init__(self, steps: tuple[int, ...], log_dir: str | Path, enabled: bool = True):
        self.first, self.last = steps if (steps and enabled) else (0, -1)
        self.log_dir = str(log_dir)
        self.active = False

    def before(self, step: int) -> None:
        """Call before running step ``step`` (1-based)."""
        if not self.active and self.first <= step <= self.last:
            jax.profiler.start_trace(self.log_dir)
            self.active = True
            log.info("profiling steps %d..%d into %s", step, self.last, self.log_dir)

    def after(self, step: int) -> None:
        """Call once step ``step`` has finished on the device."""
        if self.active and step >= self.last:
            self.stop()

    def stop(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False
