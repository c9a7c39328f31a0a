"""Non-finite safety: a step whose loss or gradient holds a NaN/Inf is not applied.

On the device (inside the train step): :func:`all_finite` checks the loss and every
gradient, and :func:`keep_if_finite` selects the updated params and optimizer state only
when the check passed, else the last good ones (element-wise, so the donated state is
still updated in place). The step counter advances either way: it counts batches, so the
data position, the learning-rate schedule and the checkpoint steps stay aligned.

On the host: :class:`NonFiniteGuard` counts skipped steps, writes each one with its batch's
data position (the data iterator's state before the batch) to ``nonfinite_steps.jsonl`` in
the run directory, and raises :class:`NonFiniteError` after ``train.max_bad_steps`` in a row.
Since a skipped step leaves the state as it was, every checkpoint holds a finite state.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import jax
import jax.numpy as jnp

from bagpiper_jax.errors import BagpiperError

log = logging.getLogger(__name__)

LOG_FILE = "nonfinite_steps.jsonl"


class NonFiniteError(BagpiperError):
    """Too many steps in a row had a non-finite loss or gradient."""


def all_finite(*trees) -> jax.Array:
    """Bool scalar: every element of every array leaf of ``trees`` is finite."""
    leaves = jax.tree.leaves(trees)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def keep_if_finite(finite: jax.Array, new, old):
    """``new`` where ``finite`` (a bool scalar) else ``old``, leaf by leaf (same structure)."""
    return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)


class NonFiniteGuard:
    """Counts the skipped steps of a run on the host; stops it after ``max_bad_steps`` in a row.

    Args:
      max_bad_steps: consecutive skipped steps that stop the run.
      run_dir: where ``nonfinite_steps.jsonl`` goes (written only if ``write``).
      write: process 0 writes the file; every process logs its own data position.
    """

    def __init__(self, max_bad_steps: int, run_dir: str | Path, write: bool = True):
        self.max_bad_steps = max_bad_steps
        self.path = Path(run_dir) / LOG_FILE
        self.write = write
        self.total = 0  # skipped steps in this process's run (since start-up)
        self.in_window = 0  # skipped since the last logged step
        self.streak: list[int] = []  # the current run of consecutive skipped steps

    def record(self, step: int, finite: bool, metrics: dict, data_position: bytes | None) -> None:
        """Notes step ``step``'s outcome; ``metrics`` give its loss and gradient norm and
        ``data_position`` is the data iterator's state before its batch (JSON bytes). Raises
        :class:`NonFiniteError` on the ``max_bad_steps``-th skipped step in a row."""
        if finite:
            self.streak = []
            return
        self.total += 1
        self.in_window += 1
        self.streak.append(step)
        entry = {
            "step": step,
            "loss": float(metrics["loss"]),
            "grad_norm": float(metrics["grad_norm"]),
            "data_position": None if data_position is None else json.loads(data_position),
        }
        log.warning(
            "step %d: non-finite loss %s or gradient norm %s; update skipped (%d in a row); data position %s",
            step,
            entry["loss"],
            entry["grad_norm"],
            len(self.streak),
            entry["data_position"],
        )
        if self.write:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(json.dumps(entry) + "\n")
        if len(self.streak) >= self.max_bad_steps:
            raise NonFiniteError(
                f"{len(self.streak)} steps in a row (steps {self.streak[0]}..{step}) had a non-finite loss or "
                f"gradient (train.max_bad_steps={self.max_bad_steps}); their updates were skipped, so the state "
                f"and every checkpoint hold the last good step's params. The batches' data positions are in "
                f"{self.path}. Inspect the data there or lower train.lr; a rerun resumes from the last checkpoint "
                f"and meets the same batches again (raise train.max_bad_steps to skip past them)"
            )

    def window(self) -> dict[str, int]:
        """Counts for a logged step: skipped steps since the last one and in total."""
        counts = {"bad_steps": self.in_window, "bad_steps_total": self.total}
        self.in_window = 0
        return counts
