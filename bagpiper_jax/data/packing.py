"""First-fit packing of templated examples into rows (Grain's algorithm, faster).

:class:`FastFirstFit` is Grain's ``FirstFitPackedBatch`` (same bins, same placement, same
output) without its per-element pytree walks. It subclasses a private Grain class, so it
is installed through :mod:`bagpiper_jax.compat`, which falls back to Grain's own packer on
an untested Grain release.
"""

from __future__ import annotations

import grain
import grain.experimental as grain_exp
import numpy as np

from bagpiper_jax.compat import GrainPackerBase, grain_key_name, install_packer


class FastFirstFit(GrainPackerBase):
    """Grain's first-fit packing of flat dict elements (same bins, same placement, same
    output), without its per-element pytree walks: one length check over a
    ``[features, bins]`` fill matrix, then plain slice writes."""

    def __init__(self, element_for_shapes, num_packing_bins, length_struct, **kw):
        super().__init__(element_for_shapes, num_packing_bins, length_struct, **kw)
        self._keys = [grain_key_name(path[0]) for path, _ in self._flat_paths_and_max]
        self._fill = np.zeros((len(self._keys), num_packing_bins), np.int64)
        self._counting = np.arange(int(self._capacities.max()), dtype=np.int32)

    def try_add_to_batch(self, element) -> list[str] | None:
        values = [element[k] for k in self._keys]
        lengths = np.array([len(v) for v in values], np.int64)
        if np.any(lengths > self._capacities):
            raise ValueError(
                f"Inputs to PackedBatch must be truncated to max length: lengths "
                f"{dict(zip(self._keys, lengths.tolist()))}, capacities {self._length_struct}"
            )
        fit = self._fill + lengths[:, None] <= self._capacities[:, None]  # [features, bins]
        if self._max_sequences_per_bin is not None:
            fit &= self._num_examples_per_row < self._max_sequences_per_bin
        rows = fit.all(axis=0)
        if not rows.any():
            fails = (~fit).sum(axis=1)
            return [self._feature_paths[i] for i in np.argsort(-fails) if fails[i] > 0]
        row = int(rows.argmax())
        segment = self._num_examples_per_row[row] + 1
        for i, (v, n) in enumerate(zip(values, lengths.tolist())):
            if n:
                start = int(self._fill[i, row])
                self._flat_values[i][row, start : start + n] = v
                self._flat_segment_ids[i][row, start : start + n] = segment
                self._flat_positions[i][row, start : start + n] = self._counting[:n]
                self._fill[i, row] = start + n
        self._num_examples_per_row[row] = segment
        return None


def first_fit_pack(ds: grain.IterDataset, length_struct: dict, num_packing_bins: int, seed: int) -> grain.IterDataset:
    """``grain.experimental.FirstFitPackIterDataset`` over ``ds``, packing with
    :class:`FastFirstFit` where the Grain release allows it."""
    packed = grain_exp.FirstFitPackIterDataset(
        ds, length_struct=length_struct, num_packing_bins=num_packing_bins, seed=seed
    )
    install_packer(packed, FastFirstFit)
    return packed
