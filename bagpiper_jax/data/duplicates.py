"""Repeated example ids across a whole prepared corpus, found without holding its ids.

Every shard stores a 64-bit hash per record id (``.idhash.npy``). When the index is
assembled the (hash, position) pairs are spilled into hash-range buckets on disk, each
bucket sorted on its own, and equal hashes checked against the real ids (so a hash
collision never drops a record). Memory is one bucket (``bucket_bytes``), whatever the
corpus size; nothing per record is a Python object. The first occurrence in index order
is kept, later ones are dropped and reported.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import numpy as np

from bagpiper_jax.data.shards import ShardEntry

PAIR = np.dtype([("hash", "<u8"), ("position", "<i8")])


def find_duplicates(
    directory: Path, shards: list[ShardEntry], bucket_bytes: int = 256 << 20
) -> tuple[np.ndarray, list[dict]]:
    """Positions (over all shards in order, sorted int64) of records whose id repeats an
    earlier record's, and one report entry per dropped record."""
    offsets = np.cumsum([0] + [s.count for s in shards])
    total = int(offsets[-1])
    bits = max(0, math.ceil(math.log2(max(1, total * PAIR.itemsize / bucket_bytes))))
    candidates = []  # (later position, first position)
    with tempfile.TemporaryDirectory(dir=directory, prefix=".duplicates-") as spill:
        files = [open(Path(spill) / f"bucket-{b}", "wb") for b in range(2**bits)]  # noqa: SIM115 - closed below
        try:
            for shard, offset in zip(shards, offsets[:-1]):
                pairs = np.empty(shard.count, PAIR)
                pairs["hash"] = np.load(directory / f"{shard.name}.idhash.npy")
                pairs["position"] = offset + np.arange(shard.count)
                bucket = (
                    (pairs["hash"] >> np.uint64(64 - bits)).astype(np.int64)
                    if bits
                    else np.zeros(shard.count, np.int64)
                )
                order = np.argsort(bucket, kind="stable")
                bounds = np.searchsorted(bucket[order], np.arange(2**bits + 1))
                for b in np.flatnonzero(np.diff(bounds)):
                    pairs[order[bounds[b] : bounds[b + 1]]].tofile(files[b])
        finally:
            for f in files:
                f.close()
        for b in range(2**bits):
            pairs = np.fromfile(Path(spill) / f"bucket-{b}", PAIR)
            pairs = pairs[np.lexsort((pairs["position"], pairs["hash"]))]
            repeat = np.flatnonzero(pairs["hash"][1:] == pairs["hash"][:-1]) + 1
            if not len(repeat):
                continue
            run_start = np.maximum.accumulate(
                np.where(np.r_[True, pairs["hash"][1:] != pairs["hash"][:-1]], np.arange(len(pairs)), 0)
            )
            candidates += zip(pairs["position"][repeat].tolist(), pairs["position"][run_start[repeat]].tolist())
    return _confirmed(directory, shards, offsets, candidates)


def _confirmed(
    directory: Path, shards: list[ShardEntry], offsets: np.ndarray, candidates: list[tuple[int, int]]
) -> tuple[np.ndarray, list[dict]]:
    """The candidates whose ids are really equal (not a hash collision), with reports."""
    cache: dict[int, dict] = {}

    def record(position: int) -> tuple[str, str]:
        s = int(np.searchsorted(offsets, position, side="right") - 1)
        if s not in cache:
            cache[s] = json.loads((directory / f"{shards[s].name}.ids.json").read_text())
        return cache[s]["ids"][position - offsets[s]], cache[s]["where"][position - offsets[s]]

    dropped, reports = [], []
    for later, first in sorted(candidates):
        (later_id, later_where), (first_id, first_where) = record(later), record(first)
        if later_id == first_id:
            dropped.append(later)
            reports.append(
                {
                    "where": later_where,
                    "id": later_id,
                    "kind": "duplicate id",
                    "reason": f"{later_where}: id {later_id!r} repeats {first_where}",
                }
            )
    return np.asarray(dropped, np.int64), reports
