"""A score with its sample count and a bootstrap 95% interval.

Every number an evaluation reports is a :class:`Score`: the statistic over all ``n``
items, and the 2.5th / 97.5th percentiles of the same statistic over ``rounds`` resamples
of the items with replacement (a fixed seed, so a rerun gives the same interval).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

BOOTSTRAP_ROUNDS = 1000
BOOTSTRAP_SEED = 0


@dataclasses.dataclass(frozen=True)
class Score:
    """``value`` over ``n`` items with its bootstrap 95% interval ``[low, high]``."""

    value: float
    n: int
    low: float
    high: float

    def to_json(self) -> dict:
        return {"value": self.value, "n": self.n, "ci95": [self.low, self.high]}


def resamples(n: int, rounds: int = BOOTSTRAP_ROUNDS, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """Item indices ``[rounds, n]`` drawn with replacement (the same for every statistic of
    ``n`` items, so their intervals come from the same resamples)."""
    return np.random.default_rng(seed).integers(0, n, (rounds, n))


def bootstrap(
    statistic: Callable[[np.ndarray], float], n: int, rounds: int = BOOTSTRAP_ROUNDS, seed: int = BOOTSTRAP_SEED
) -> Score:
    """``statistic(indices)`` over all ``n`` items and its bootstrap interval. ``statistic``
    takes an int array of item indices (repeats allowed) and returns a float."""
    if n <= 0:
        raise ValueError("a score needs at least one item")
    value = float(statistic(np.arange(n)))
    draws = np.asarray([statistic(idx) for idx in resamples(n, rounds, seed)], np.float64)
    low, high = np.percentile(draws, [2.5, 97.5])
    return Score(value, n, float(low), float(high))


def mean_score(values, rounds: int = BOOTSTRAP_ROUNDS, seed: int = BOOTSTRAP_SEED) -> Score:
    """The mean of per-item ``values`` ``[n]`` with its bootstrap interval (vectorised)."""
    values = np.asarray(values, np.float64)
    if values.size == 0:
        raise ValueError("a score needs at least one item")
    means = values[resamples(len(values), rounds, seed)].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return Score(float(values.mean()), len(values), float(low), float(high))
