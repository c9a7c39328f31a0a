"""Where a run's wall time goes: the training loop's phases per logged step, and goodput.

The loop times each step's phases with :meth:`StepTimer.phase`:

- ``data_wait``: waiting for the next packed batch from the input pipeline;
- ``host_to_device``: building the global batch arrays and their transfer to the devices;
- ``compute``: the jitted step, dispatch to completion (the loop waits for it);
- ``checkpoint``: the blocking part of a checkpoint save (the write itself is async);
- ``eval``: eval passes.

:meth:`StepTimer.window` turns them into per-step averages over the steps since the last
logged step (``time/<phase>_s``, with ``time/other_s`` the rest: logging, the progress bar)
beside ``step_s``, and two productive fractions: ``goodput``, the compute time of applied
steps over the window's wall time, and ``goodput_run``, the same since the trainer started
(start-up, restore and compilation count as unproductive). Compute of a step skipped as
non-finite is not productive.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

PHASES = ("data_wait", "host_to_device", "compute", "checkpoint", "eval")


class Phase:
    """One timed interval (``seconds`` is set when its ``with`` block ends)."""

    seconds: float = 0.0


class StepTimer:
    """Accumulates phase times over a window of steps and productive time over the run."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self._clock = clock
        self._run_start = self._window_start = clock()
        self._run_productive = 0.0
        self._reset()

    def _reset(self):
        self._spent = dict.fromkeys(PHASES, 0.0)
        self._wasted = 0.0
        self._steps = 0

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[Phase]:
        """Times the ``with`` block as ``name`` (one of :data:`PHASES`)."""
        timed, start = Phase(), self._clock()
        try:
            yield timed
        finally:
            timed.seconds = self._clock() - start
            self._spent[name] += timed.seconds

    def step_done(self, compute: Phase, applied: bool) -> None:
        """Counts a step; ``compute`` was productive only if its update was ``applied``."""
        self._steps += 1
        if not applied:
            self._wasted += compute.seconds

    def restart_window(self) -> None:
        """Starts the window now, dropping what it held (e.g. after start-up work that is
        not a step)."""
        self._window_start = self._clock()
        self._reset()

    def run_seconds(self) -> float:
        """Wall time since the trainer started."""
        return self._clock() - self._run_start

    def window(self) -> dict[str, float]:
        """The window's per-step averages and goodputs (see the module doc); starts the next."""
        now = self._clock()
        wall, steps = now - self._window_start, max(self._steps, 1)
        productive = self._spent["compute"] - self._wasted
        self._run_productive += productive
        out = {"step_s": wall / steps, **{f"time/{k}_s": v / steps for k, v in self._spent.items()}}
        out["time/other_s"] = out["step_s"] - sum(self._spent.values()) / steps
        out["goodput"] = productive / wall if wall > 0 else 0.0
        out["goodput_run"] = self._run_productive / (now - self._run_start)
        self._window_start = now
        self._reset()
        return out
