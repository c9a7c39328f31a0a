"""Corpus preparation (``bagpiper-prepare``): manifest parts -> record shards + index.

The manifest (a file, a directory of ``*.jsonl`` parts or a glob; local or ``gs://``) is
planned into work units — byte ranges of at most ``data.manifest_chunk_bytes`` of each
part, from the parts' sizes alone — and process ``p`` of ``n`` prepares the units ``u``
with ``u % n == p``, reading only their lines. A unit's examples go through
:class:`~bagpiper_jax.data.preparer.Preparer` (tokens, codec codes on all local devices,
FLAC for user audio) into shards of ``data.examples_per_shard`` records (see
:mod:`bagpiper_jax.data.shards`); the unit's file is written last, so a re-run skips
finished units and redoes interrupted ones. After a barrier, process 0 assembles the
index: the shards of every unit in order, repeated ids across the whole corpus
(:mod:`bagpiper_jax.data.duplicates`), ``report.json``.

A bad input never aborts the run: a malformed or non-UTF-8 line, an unreadable part,
missing/corrupt/empty/NaN audio, empty text, an example longer than a row that is not text
only, or a repeated id is skipped and listed with its reason in ``report.json``.
"""

from __future__ import annotations

import collections
import json
import time
from pathlib import Path

from jax.experimental import multihost_utils
from tqdm import tqdm

from bagpiper_jax.audio_io import SAMPLE_RATE
from bagpiper_jax.config import Config
from bagpiper_jax.data.duplicates import find_duplicates
from bagpiper_jax.data.manifest import ManifestError, WorkUnit, manifest_parts, plan_units, read_unit
from bagpiper_jax.data.preparer import Preparer, require_assets
from bagpiper_jax.data.provenance import binding, check_rerun, config_hash, records_config, write_binding
from bagpiper_jax.data.shards import ShardEntry, remove_prepared, temporary_path, write_index, write_shard
from bagpiper_jax.locks import DirectoryLock


def _unit_path(out_dir: Path, unit: WorkUnit) -> Path:
    return out_dir / "units" / f"unit-{unit.index:06d}.json"


class _Progress:
    """The progress bar: examples, clips/s and audio-hours/s of this process."""

    def __init__(self, enabled: bool):
        self.bar = tqdm(unit="ex", disable=not enabled, desc="prepare")
        self.start, self.clips, self.seconds = time.perf_counter(), 0, 0.0

    def update(self, examples: int, clips: int, samples: int) -> None:
        self.clips, self.seconds = self.clips + clips, self.seconds + samples / SAMPLE_RATE
        dt = time.perf_counter() - self.start
        self.bar.update(examples)
        self.bar.set_postfix(clips_per_s=f"{self.clips / dt:.1f}", audio_h_per_s=f"{self.seconds / 3600 / dt:.4f}")


def prepare_unit(preparer: Preparer, unit: WorkUnit, out_dir: Path, progress: _Progress) -> dict:
    """Prepares one work unit into shards; writes and returns its unit file's body."""
    per_shard = preparer.cfg.data.examples_per_shard
    shards, skipped, pending, pending_ids = [], [], [], set()
    lines = 0

    def flush():
        examples, where = [e for _, e in pending], {e.id: w for w, e in pending}
        records, rejected = preparer.prepare(examples)
        skipped.extend({"where": where[i], "id": i, "kind": kind, "reason": r} for i, kind, r in rejected)
        if records:
            name = f"shard-{unit.index:06d}-{len(shards):04d}"
            shards.append(
                write_shard(out_dir, name, records, [where[r.id] for r in records], preparer.cfg.data.piece_frames)
            )
        clips = [m for r in records for m in r.messages if m.kind != "text"]
        progress.update(len(pending), len(clips), sum(m.samples for m in clips if m.kind == "flac"))
        pending.clear()
        pending_ids.clear()

    try:
        for where, item in read_unit(unit):
            lines += 1
            if isinstance(item, ManifestError):
                skipped.append({"where": where, "id": None, "kind": item.kind, "reason": str(item)})
            elif item.id in pending_ids:  # within one shard (across shards: found when the index is assembled)
                skipped.append(
                    {
                        "where": where,
                        "id": item.id,
                        "kind": "duplicate id",
                        "reason": f"{where}: id {item.id!r} repeats an earlier line",
                    }
                )
            else:
                pending.append((where, item))
                pending_ids.add(item.id)
            if len(pending) == per_shard:
                flush()
        if pending:
            flush()
    except OSError as e:  # an unreadable part: report it, prepare the rest
        skipped.append(
            {
                "where": f"{unit.part.name}@{unit.start}",
                "id": None,
                "kind": "unreadable manifest part",
                "reason": f"manifest part {unit.part.path} bytes [{unit.start}, {unit.end}): {e}",
            }
        )
    body = {
        "part": unit.part.path,
        "start": unit.start,
        "end": unit.end,
        "lines": lines,
        "shards": [[s.name, s.count, s.records_crc32, s.meta_crc32] for s in shards],
        "skipped": skipped,
    }
    path = _unit_path(out_dir, unit)
    temporary_path(path).write_text(json.dumps(body))
    temporary_path(path).replace(path)
    return body


def assemble_index(cfg: Config, out_dir: Path, units: list[WorkUnit]) -> dict:
    """Writes index.json, duplicates.npy and report.json from the unit files; returns the report."""
    bodies = []
    for unit in units:
        path = _unit_path(out_dir, unit)
        if not path.is_file():
            raise FileNotFoundError(f"{path} missing: work unit {unit.index} was not prepared")
        bodies.append(json.loads(path.read_text()))
    shards = [ShardEntry(*entry) for body in bodies for entry in body["shards"]]
    duplicates, duplicate_reports = find_duplicates(out_dir, shards)
    skipped = [s for body in bodies for s in body["skipped"]] + duplicate_reports
    records = records_config(cfg)
    index = write_index(out_dir, shards, config_hash(records), cfg.data.piece_frames, len(skipped), duplicates, records)
    report = {
        "prepared": index["examples"],
        "skipped": len(skipped),
        "by_reason": dict(collections.Counter(s["kind"] for s in skipped)),
        "lines": sum(body["lines"] for body in bodies),
        "inputs": skipped,
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=1))
    return report


def prepare_manifest(
    cfg: Config,
    manifest: str | Path,
    out_dir: str | Path,
    *,
    process_index: int = 0,
    process_count: int = 1,
    progress: bool = True,
    overwrite: bool = False,
) -> dict | None:
    """Prepares this process's work units; process 0 assembles the index once all are there
    (after a barrier when there are several processes). Returns the report there.

    ``out_dir`` is bound to its inputs (:mod:`~bagpiper_jax.data.provenance`): a re-run
    with the same ones continues where the last stopped, other inputs are refused unless
    ``overwrite`` (which empties the directory of a previous preparation first). One
    process per process index prepares into a directory at a time (a lock)."""
    out_dir = Path(out_dir)
    require_assets(cfg)
    parts = manifest_parts(manifest)
    bound = binding(cfg, parts)
    with DirectoryLock(out_dir, f"prepare-{process_index}", "bagpiper-prepare output"):
        if not overwrite:
            check_rerun(out_dir, bound)
        _barrier(process_count, "bagpiper-prepare-checked")  # every process has read the old binding
        if overwrite and process_index == 0:
            remove_prepared(out_dir)
        _barrier(process_count, "bagpiper-prepare-cleared")
        write_binding(out_dir, bound)  # by every process: the same bytes, written atomically
        (out_dir / "units").mkdir(parents=True, exist_ok=True)
        units = plan_units(parts, cfg.data.manifest_chunk_bytes)
        mine = [u for u in units if u.index % process_count == process_index and not _unit_path(out_dir, u).is_file()]
        preparer = Preparer(cfg) if mine else None
        bar = _Progress(progress)
        for unit in mine:
            prepare_unit(preparer, unit, out_dir, bar)
        bar.bar.close()
        _barrier(process_count, "bagpiper-prepare")
        if process_index == 0:
            return assemble_index(cfg, out_dir, units)
    return None


def _barrier(process_count: int, name: str) -> None:
    if process_count > 1:
        multihost_utils.sync_global_devices(name)
