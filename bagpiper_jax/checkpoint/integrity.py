"""Checksums of checkpoint files, written when a checkpoint is saved and verified before it
is read.

A sealed directory (a run checkpoint's step, a params directory's ``params/``) holds
``checksums.json``: every file under it with its size and CRC32 (but Orbax's commit marker
and step metadata at its top, which Orbax rewrites when it marks the step complete). :func:`verify` reads the
files back and names the first one that is missing, of another size or of other bytes
(storage damage, a partial copy, a stray edit). A directory written before checksums
existed has no ``checksums.json``: it is reported as unsealed and read as before.

Reading back costs one pass over the files (about 1 GB/s per process); several processes
verify disjoint shares of one directory (``share=(index, count)``).
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from pathlib import Path

from etils import epath

from bagpiper_jax.checkpoint.errors import CheckpointError

MANIFEST = "checksums.json"
FORMAT = "bagpiper-checksums"
# Files Orbax (re)writes at the top of a step when it marks it complete, after the seal.
UNSEALED = ("_CHECKPOINT_METADATA", "commit_success.txt")
_BLOCK = 16 << 20


class DamagedCheckpointError(CheckpointError):
    """A checkpoint's files do not match the checksums written when it was saved."""


@dataclasses.dataclass(frozen=True)
class Verdict:
    """What :func:`verify` found: ``damage`` names the first bad file (None: intact or
    unsealed); ``sealed``: whether the directory has checksums at all."""

    damage: str | None
    sealed: bool


def _path(directory) -> epath.Path:
    directory = str(directory)
    return epath.Path(directory if "://" in directory else Path(directory).absolute())


def _files(root: epath.Path) -> list[str]:
    """Paths (relative to ``root``, ``/``-separated, sorted) of every file under it but the manifest."""
    out, pending = [], [root]
    while pending:
        for entry in pending.pop().iterdir():
            if entry.is_dir():
                pending.append(entry)
            else:
                name = str(entry)[len(str(root)) + 1 :]
                if name != MANIFEST and name not in UNSEALED:
                    out.append(name)
    return sorted(out)


def _crc32(path: epath.Path) -> tuple[int, int]:
    """(size, CRC32) of one file, read in blocks."""
    size, crc = 0, 0
    with path.open("rb") as f:
        while block := f.read(_BLOCK):
            size, crc = size + len(block), zlib.crc32(block, crc)
    return size, crc


def seal(directory) -> None:
    """Writes ``checksums.json`` over every file now under ``directory``."""
    root = _path(directory)
    files = {name: list(_crc32(root / name)) for name in _files(root)}
    (root / MANIFEST).write_text(json.dumps({"format": FORMAT, "algorithm": "crc32", "files": files}))


def is_sealed(directory) -> bool:
    return (_path(directory) / MANIFEST).exists()


def verify(directory, share: tuple[int, int] = (0, 1)) -> Verdict:
    """Checks the files of share ``index`` of ``count`` (every ``count``-th listed file from
    the ``index``-th) against ``checksums.json``; the manifest itself is checked by all."""
    root = _path(directory)
    manifest = root / MANIFEST
    if not manifest.exists():
        return Verdict(None, sealed=False)
    try:
        body = json.loads(manifest.read_text())
        files = body["files"]
        if body.get("format") != FORMAT or not isinstance(files, dict):
            raise ValueError("not a checksums manifest")
    except (OSError, ValueError, KeyError, TypeError) as e:
        return Verdict(f"{manifest} is unreadable ({e})", sealed=True)
    index, count = share
    for name in sorted(files)[index::count]:
        path, (size, crc) = root / name, files[name]
        try:
            found = _crc32(path)
        except FileNotFoundError:
            return Verdict(f"{path} is missing", sealed=True)
        except OSError as e:
            return Verdict(f"{path} cannot be read ({e})", sealed=True)
        if found[0] != size:
            return Verdict(f"{path} has {found[0]} bytes, {size} when saved", sealed=True)
        if found[1] != crc:
            return Verdict(f"{path} does not match its checksum (its bytes changed since it was saved)", sealed=True)
    return Verdict(None, sealed=True)


def check_intact(directory, what: str = "checkpoint") -> None:
    """Raises :class:`DamagedCheckpointError` naming the first damaged file of ``directory``."""
    verdict = verify(directory)
    if verdict.damage:
        raise DamagedCheckpointError(f"{what} is damaged: {verdict.damage}")
