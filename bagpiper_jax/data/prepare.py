"""Corpus preparation (``bagpiper-prepare``): JSONL manifest -> ArrayRecord shards of
prepared examples + index.

Manifest lines are cut into shards of ``data.examples_per_shard`` consecutive lines;
process ``p`` of ``n`` (``jax.process_index()/process_count()``) prepares the shards
``k`` with ``k % n == p``, so the same command scales over the hosts of a pod. A shard is
written to a temporary name and renamed with its metadata file when complete, so an
interrupted run resumes by skipping finished shards. Each example is prepared by
:class:`~bagpiper_jax.data.preparer.Preparer` (tokens, codec codes, log-mel).

A bad input (missing/corrupt/empty/NaN audio, empty or non-string text, malformed line,
an example longer than a row that is not text-only) never aborts the run: it is skipped
and listed with its reason in ``report.json``; counts are printed at the end. Output::

    OUT/shard-00000.array_record   records (see bagpiper_jax.data.records)
    OUT/shard-00000.json           per-shard ids, frame lengths, text-only flags, clip mel lengths, skips
    OUT/index.json                 shards, counts, config hash (what the pipeline reads)
    OUT/report.json                every skipped input with its reason, counts per reason
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import time
from pathlib import Path

from array_record.python.array_record_module import ArrayRecordWriter
from jax.experimental import multihost_utils
from tqdm import tqdm

from bagpiper_jax.config import Config
from bagpiper_jax.data.manifest import Example, ManifestError, read_manifest
from bagpiper_jax.data.preparer import Preparer
from bagpiper_jax.data.records import PreparedExample, encode_record


def config_hash(cfg: Config) -> str:
    """Hash of everything that changes prepared records."""
    relevant = {
        "vocab": {k: getattr(cfg.model, k) for k in ("num_special", "text_vocab_size", "num_streams", "codebook_size")},
        "tokenizer": cfg.assets.tokenizer,
        "codec": cfg.assets.codec,
        "max_audio_seconds": cfg.data.max_audio_seconds,
        "row_frames": cfg.data.row_frames,
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def write_shard(out_dir: Path, k: int, records: list[PreparedExample], skips: list[dict]):
    name = f"shard-{k:05d}.array_record"
    tmp = out_dir / f".{name}.tmp"
    writer = ArrayRecordWriter(str(tmp), "group_size:1")
    for r in records:
        writer.write(encode_record(r))
    writer.close()
    os.replace(tmp, out_dir / name)
    meta = {
        "file": name,
        "count": len(records),
        "ids": [r.id for r in records],
        "frames": [r.frames for r in records],
        "text_only": [all(m.kind == "text" for m in r.messages) for r in records],
        "mel_frames": [[len(m.array) for m in r.messages if m.kind == "mel"] for r in records],
        "skipped": skips,
    }
    tmp_meta = out_dir / f".shard-{k:05d}.json.tmp"
    tmp_meta.write_text(json.dumps(meta))
    os.replace(tmp_meta, out_dir / f"shard-{k:05d}.json")


def _shard_lines(manifest: Path, per_shard: int) -> list[list[tuple[int, Example | ManifestError]]]:
    """Manifest lines cut into shards; a repeated id becomes a ``duplicate id`` error."""
    shards: list[list] = []
    seen: set[str] = set()
    for i, (line, item) in enumerate(read_manifest(manifest)):
        if i % per_shard == 0:
            shards.append([])
        if isinstance(item, Example):
            if item.id in seen:
                item = ManifestError(
                    f"{Path(manifest).name}:{line}: id {item.id!r} repeats an earlier line", "duplicate id"
                )
            seen.add(getattr(item, "id", None))
        shards[-1].append((line, item))
    return shards


def write_index(cfg: Config, out_dir: Path, num_shards: int) -> dict:
    """Assembles index.json and report.json from the per-shard metadata files."""
    metas = []
    for k in range(num_shards):
        path = out_dir / f"shard-{k:05d}.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} missing: shard {k} was not prepared")
        metas.append(json.loads(path.read_text()))
    skipped = [s for m in metas for s in m["skipped"]]
    reasons = collections.Counter(s["kind"] for s in skipped)
    # mel_frames: per example, the log-mel frames of each continuous-audio clip (absent in
    # shards written before it was recorded).
    index = {
        "shards": [
            {**{k: m[k] for k in ("file", "count", "ids", "frames", "text_only")}, "mel_frames": m.get("mel_frames")}
            for m in metas
        ],
        "examples": sum(m["count"] for m in metas),
        "skipped": len(skipped),
        "config_hash": config_hash(cfg),
    }
    report = {"prepared": index["examples"], "skipped": len(skipped), "by_reason": dict(reasons), "inputs": skipped}
    (out_dir / "index.json").write_text(json.dumps(index))
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
) -> dict | None:
    """Prepares this process's shards; process 0 writes index.json/report.json once all are
    there (after a barrier when there are several processes). Returns the report there."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shards = _shard_lines(Path(manifest), cfg.data.examples_per_shard)
    mine = [
        k
        for k in range(len(shards))
        if k % process_count == process_index and not (out_dir / f"shard-{k:05d}.json").is_file()
    ]
    preparer = Preparer(cfg) if mine else None
    bar = tqdm(total=sum(len(shards[k]) for k in mine), unit="ex", disable=not progress, desc="prepare")
    start, clips = time.perf_counter(), 0
    for k in mine:
        examples, skips = [], []
        for line, item in shards[k]:
            if isinstance(item, ManifestError):
                skips.append({"line": line, "id": None, "kind": item.kind, "reason": str(item)})
            else:
                examples.append(item)
        lines = {ex.id: line for line, ex in shards[k] if not isinstance(ex, ManifestError)}
        records, skipped = preparer.prepare(examples)
        skips += [{"line": lines[i], "id": i, "kind": kind, "reason": r} for i, kind, r in skipped]
        write_shard(out_dir, k, records, skips)
        clips += sum(m.modality == "audio" for ex in examples for m in ex.messages)
        bar.update(len(shards[k]))
        bar.set_postfix(clips_per_s=f"{clips / (time.perf_counter() - start):.1f}")
    bar.close()
    if process_count > 1:
        multihost_utils.sync_global_devices("bagpiper-prepare")
    if process_index == 0:
        return write_index(cfg, out_dir, len(shards))
    return None
