"""A prepared corpus on disk: record shards, their compact metadata, and the index.

``bagpiper-prepare --out DIR`` writes::

    DIR/index.json                       the shards in order: name, record count, checksums
    DIR/report.json                      counts per skip reason and every skipped input
    DIR/duplicates.npy                   int64 [n]: positions (in index order) of records dropped as repeated ids
    DIR/units/unit-000123.json           one finished work unit: its part and byte range, shards, skipped inputs
    DIR/shard-000123-0000.array_record   the records (bagpiper_jax.data.records)
    DIR/shard-000123-0000.meta.npy       per record: frames, log-mel frames, pieces, text-only (memory-mappable)
    DIR/shard-000123-0000.ids.json       per record: its id and manifest line (read by reports only)
    DIR/shard-000123-0000.idhash.npy     per record: a 64-bit hash of its id (duplicate detection)

The input pipeline reads ``index.json`` and the ``.meta.npy`` of its own shards only:
nothing per example is held in Python objects, and a host's start-up costs what it reads.
A directory prepared before this format (``index.json`` listing every example, a
``shard-XXXXX.json`` per shard) is refused with the command that migrates it in place
(:func:`migrate_v1`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import socket
import zlib
from pathlib import Path

import numpy as np
from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter

from bagpiper_jax.data.records import CONTINUOUS_KINDS, PreparedExample, decode_record, encode_record
from bagpiper_jax.errors import BagpiperError

FORMAT = "bagpiper-prepared"
VERSION = 2
# Per record: templated frames, log-mel frames and encoder pieces of its continuous audio,
# and whether it is text only (may be truncated to a row).
META_DTYPE = np.dtype([("frames", "<i4"), ("mel_frames", "<i4"), ("pieces", "<i4"), ("text_only", "u1")])


class DataError(BagpiperError):
    """A prepared corpus is missing or inconsistent; the message names the file."""


@dataclasses.dataclass(frozen=True)
class ShardEntry:
    """One shard as the index lists it."""

    name: str
    count: int
    records_crc32: int
    meta_crc32: int


@dataclasses.dataclass(frozen=True)
class PreparedIndex:
    """``index.json`` of a prepared directory."""

    directory: Path
    shards: tuple[ShardEntry, ...]
    config_hash: str
    piece_frames: int
    examples: int
    prepared_with: dict = dataclasses.field(default_factory=dict)  # data.provenance.records_config

    def records_path(self, shard: ShardEntry) -> Path:
        return self.directory / f"{shard.name}.array_record"

    def meta(self, shard: ShardEntry) -> np.ndarray:
        """The shard's metadata (``META_DTYPE`` ``[count]``), checked against its checksum."""
        path = self.directory / f"{shard.name}.meta.npy"
        try:
            data = path.read_bytes()
        except OSError as e:
            raise DataError(f"{path} listed in {self.directory / 'index.json'} cannot be read: {e}") from e
        if zlib.crc32(data) != shard.meta_crc32:
            raise DataError(f"{path} does not match the checksum in {self.directory / 'index.json'}")
        meta = np.load(path, mmap_mode="r")
        if meta.dtype != META_DTYPE or len(meta) != shard.count:
            raise DataError(f"{path} holds {len(meta)} records of {meta.dtype}, the index says {shard.count}")
        return meta

    def duplicates(self) -> np.ndarray:
        """Sorted int64 positions (over all shards in index order) of dropped duplicates."""
        path = self.directory / "duplicates.npy"
        return np.load(path) if path.is_file() else np.zeros(0, np.int64)


def id_hash(ids: list[str]) -> np.ndarray:
    """uint64 ``[n]``: the first 8 bytes of each id's BLAKE2b digest."""
    return np.asarray(
        [int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8).digest(), "little") for i in ids], np.uint64
    )


def record_meta(examples: list[PreparedExample], piece_frames: int) -> np.ndarray:
    """``META_DTYPE`` ``[len(examples)]`` of prepared examples."""
    meta = np.zeros(len(examples), META_DTYPE)
    for i, ex in enumerate(examples):
        clips = [m.mel_frames for m in ex.messages if m.kind in CONTINUOUS_KINDS]
        pieces = sum(-(-n // piece_frames) for n in clips)
        meta[i] = (ex.frames, sum(clips), pieces, all(m.kind == "text" for m in ex.messages))
    return meta


def temporary_path(path: Path) -> Path:
    """Where ``path`` is written before it is renamed into place: unique to this host and
    process, so two writers never share a temporary file."""
    return path.with_name(f".{path.name}.{socket.gethostname()}-{os.getpid()}.tmp")


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = temporary_path(path)
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _write_ids(directory: Path, name: str, ids: list[str], where: list[str]) -> None:
    _write_atomic(directory / f"{name}.ids.json", json.dumps({"ids": ids, "where": where}).encode())
    _write_atomic(directory / f"{name}.idhash.npy", _npy_bytes(id_hash(ids)))


def write_shard(
    directory: Path, name: str, examples: list[PreparedExample], where: list[str], piece_frames: int
) -> ShardEntry:
    """Writes one shard (records, metadata, ids with their manifest lines ``where``, id
    hashes); the records file last, under its final name only once complete. Returns its
    index entry."""
    meta = _npy_bytes(record_meta(examples, piece_frames))
    _write_atomic(directory / f"{name}.meta.npy", meta)
    _write_ids(directory, name, [ex.id for ex in examples], where)
    tmp = temporary_path(directory / f"{name}.array_record")
    writer = ArrayRecordWriter(str(tmp), "group_size:1")
    for ex in examples:
        writer.write(encode_record(ex))
    writer.close()
    records_crc = zlib.crc32(tmp.read_bytes())
    os.replace(tmp, directory / f"{name}.array_record")
    return ShardEntry(name, len(examples), records_crc, zlib.crc32(meta))


def write_index(
    directory: Path,
    shards: list[ShardEntry],
    config_hash: str,
    piece_frames: int,
    skipped: int,
    duplicates: np.ndarray,
    prepared_with: dict | None = None,
) -> dict:
    """Writes ``duplicates.npy`` and ``index.json``; returns the index body. ``prepared_with``:
    the settings the records were made with (:func:`bagpiper_jax.data.provenance.records_config`)."""
    _write_atomic(directory / "duplicates.npy", _npy_bytes(np.asarray(duplicates, np.int64)))
    body = {
        "format": FORMAT,
        "version": VERSION,
        "config_hash": config_hash,
        "prepared_with": prepared_with or {},
        "piece_frames": piece_frames,
        "examples": sum(s.count for s in shards) - len(duplicates),
        "records": sum(s.count for s in shards),
        "skipped": skipped,
        "duplicates": len(duplicates),
        "shards": [[s.name, s.count, s.records_crc32, s.meta_crc32] for s in shards],
    }
    _write_atomic(directory / "index.json", json.dumps(body).encode())
    return body


def remove_prepared(directory: Path) -> None:
    """Removes what a preparation wrote into ``directory`` (shards, their metadata, work
    units, index, report, binding, temporary files); anything else stays."""
    if not directory.is_dir():
        return
    for path in directory.iterdir():
        name = path.name
        prepared = name.startswith("shard-") or name in ("index.json", "report.json", "duplicates.npy")
        prepared |= name == "preparation.json" or (name.startswith(".") and name.endswith(".tmp"))
        if path.is_file() and prepared:
            path.unlink()
        elif path.is_dir() and (name == "units" or name.startswith(".duplicates-")):
            shutil.rmtree(path)


def read_index(directory: str | Path) -> PreparedIndex:
    """The index of a prepared directory; a directory in the previous format is refused with
    the command that migrates it."""
    directory = Path(directory)
    path = directory / "index.json"
    if not path.is_file():
        raise DataError(f"{path} not found: run bagpiper-prepare first (data.prepared={str(directory)!r})")
    try:
        body = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not valid JSON: {e}") from e
    if body.get("format") != FORMAT:
        if is_v1(directory):
            raise DataError(
                f"{directory} was prepared in an older format: migrate it in place with "
                f"`bagpiper-prepare --migrate {directory}`"
            )
        raise DataError(f"{path} is not a bagpiper-prepare index")
    if body.get("version") != VERSION:
        raise DataError(f"{path} has index version {body.get('version')}, this library reads {VERSION}")
    shards = tuple(ShardEntry(*entry) for entry in body["shards"])
    return PreparedIndex(
        directory, shards, body["config_hash"], body["piece_frames"], body["examples"], body.get("prepared_with", {})
    )


def is_v1(directory: str | Path) -> bool:
    """Whether ``directory`` was prepared in the previous format (a per-example index)."""
    try:
        body = json.loads((Path(directory) / "index.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return False
    return body.get("format") != FORMAT and "shards" in body and "examples" in body


def read_records(path: Path, indices: list[int]) -> list[PreparedExample]:
    """Records ``indices`` of one records file, decoded."""
    reader = ArrayRecordReader(str(path))
    try:
        return [decode_record(data) for data in reader.read(indices)]
    finally:
        reader.close()


def migrate_v1(directory: str | Path, piece_frames: int) -> dict:
    """Rewrites a directory prepared in the previous format (per-example lists in
    ``index.json`` and ``shard-XXXXX.json``) to this one, in place: the records stay, the
    metadata, id files and index are written anew (a shard whose metadata lacks the clips'
    log-mel lengths is read to get them). Returns the new index body."""
    directory = Path(directory)
    if not is_v1(directory):
        raise DataError(f"{directory} holds no index of the previous format to migrate")
    old = json.loads((directory / "index.json").read_text())
    shards = []
    for entry in old["shards"]:
        name = entry["file"].removesuffix(".array_record")
        mel = entry.get("mel_frames")
        if mel is None:
            records = read_records(directory / entry["file"], list(range(entry["count"])))
            mel = [[m.mel_frames for m in r.messages if m.kind in CONTINUOUS_KINDS] for r in records]
        meta = np.zeros(entry["count"], META_DTYPE)
        meta["frames"] = entry["frames"]
        meta["mel_frames"] = [sum(c) for c in mel]
        meta["pieces"] = [sum(-(-n // piece_frames) for n in c) for c in mel]
        meta["text_only"] = entry["text_only"]
        meta_bytes = _npy_bytes(meta)
        _write_atomic(directory / f"{name}.meta.npy", meta_bytes)
        _write_ids(directory, name, entry["ids"], [f"{name}[{i}]" for i in range(entry["count"])])
        records_crc = zlib.crc32((directory / entry["file"]).read_bytes())
        shards.append(ShardEntry(name, entry["count"], records_crc, zlib.crc32(meta_bytes)))
    return write_index(
        directory, shards, old["config_hash"], piece_frames, old.get("skipped", 0), np.zeros(0, np.int64)
    )
