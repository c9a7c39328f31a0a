"""The JSONL corpus manifest: one example per line, normalised to a list of messages.

Line formats (``id`` and ``task`` always present)::

    {"id": "a1", "task": "text_to_audio", "text1": "a bright 440 Hz tone", "audio1": "a1.wav"}
    {"id": "a2", "task": "audio_to_text", "audio1": "a2.flac", "text1": "a dog barks twice"}
    {"id": "t1", "task": "text_only", "text1": "some text"}
    {"id": "d1", "task": "dialogue", "dialogue": [["system", "text", "..."], ["user", "audio", "x.wav"],
                                                  ["assistant", "text", "caption"], ["assistant", "audio", "y.wav"]]}

Task to messages: ``text_to_audio`` = user text1 -> assistant audio1; ``audio_to_text``
= user audio1 -> assistant text1; ``text_only`` = assistant text1 (extra ``textN`` fields
become further assistant text messages). Audio paths are resolved against the folder of
the manifest part holding the line. A malformed line raises :class:`ManifestError` naming
the line and field; the caller counts it as skipped.

A manifest may come in parts (a file, a directory of ``*.jsonl`` or a glob; local or
``gs://``). Preparation splits it into :class:`WorkUnit` s — byte ranges of the parts,
planned from their sizes alone — so a host reads only the lines it prepares.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

from etils import epath

from bagpiper_jax.errors import BagpiperError

ROLES = ("system", "user", "assistant")
MODALITIES = ("text", "audio")
TASKS = ("text_to_audio", "audio_to_text", "text_only", "dialogue")


class ManifestError(BagpiperError):
    """A manifest line is malformed; the message names the line and field. ``kind`` is a
    short category for reports."""

    def __init__(self, message: str, kind: str = "malformed line"):
        super().__init__(message)
        self.kind = kind


@dataclasses.dataclass(frozen=True)
class Message:
    """One message of an example; audio content is an absolute file path."""

    role: str
    modality: str
    content: str  # text, or an absolute audio path


@dataclasses.dataclass(frozen=True)
class Example:
    """One manifest line as a list of messages."""

    id: str
    task: str
    messages: tuple[Message, ...]


def _text(entry: dict, field: str, where: str) -> str:
    value = entry.get(field)
    if not isinstance(value, str):
        raise ManifestError(
            f"{where}: field {field!r} must be a string, got {type(value).__name__}",
            "missing field" if value is None else "non-string text",
        )
    if not value.strip():
        raise ManifestError(f"{where}: field {field!r} is empty", "empty text")
    return value


def _audio(entry: dict, field: str, where: str, root) -> str:
    path = _text(entry, field, where)
    if "://" in path or Path(path).is_absolute():
        return path
    if "://" in str(root):
        return str(root / path)
    return str((Path(str(root)) / path).resolve())


def parse_line(line: str, where: str, root) -> Example:
    """One manifest line -> :class:`Example`; ``where`` is e.g. ``"corpus.jsonl:12"``."""
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as e:
        raise ManifestError(f"{where}: not valid JSON ({e})") from e
    if not isinstance(entry, dict):
        raise ManifestError(f"{where}: a line must be a JSON object")
    example_id = entry.get("id")
    if not isinstance(example_id, str) or not example_id:
        raise ManifestError(f"{where}: field 'id' must be a non-empty string")
    where = f"{where} (id {example_id})"
    task = entry.get("task")
    if task not in TASKS:
        raise ManifestError(f"{where}: field 'task' must be one of {TASKS}, got {task!r}")
    if task == "text_to_audio":
        messages = [
            Message("user", "text", _text(entry, "text1", where)),
            Message("assistant", "audio", _audio(entry, "audio1", where, root)),
        ]
    elif task == "audio_to_text":
        messages = [
            Message("user", "audio", _audio(entry, "audio1", where, root)),
            Message("assistant", "text", _text(entry, "text1", where)),
        ]
    elif task == "text_only":
        fields = sorted((k for k in entry if k.startswith("text") and k[4:].isdigit()), key=lambda k: int(k[4:]))
        if not fields:
            raise ManifestError(f"{where}: task 'text_only' needs a field 'text1'")
        messages = [Message("assistant", "text", _text(entry, f, where)) for f in fields]
    else:
        messages = _dialogue(entry, where, root)
    return Example(example_id, task, tuple(messages))


def _dialogue(entry: dict, where: str, root) -> list[Message]:
    turns = entry.get("dialogue")
    if not isinstance(turns, list) or not turns:
        raise ManifestError(f"{where}: field 'dialogue' must be a non-empty list of [role, modality, content]")
    messages = []
    for i, turn in enumerate(turns):
        at = f"{where} dialogue[{i}]"
        if not isinstance(turn, list) or len(turn) != 3:
            raise ManifestError(f"{at}: must be [role, modality, content]")
        role, modality, _ = turn
        if role not in ROLES:
            raise ManifestError(f"{at}: role must be one of {ROLES}, got {role!r}")
        if modality not in MODALITIES:
            raise ManifestError(f"{at}: modality must be one of {MODALITIES}, got {modality!r}")
        content = {"c": turn[2]}
        messages.append(
            Message(role, modality, _audio(content, "c", at, root) if modality == "audio" else _text(content, "c", at))
        )
    if not any(m.role == "assistant" for m in messages):
        raise ManifestError(f"{where}: the dialogue has no assistant turn (nothing to learn)", "no assistant turn")
    return messages


@dataclasses.dataclass(frozen=True)
class ManifestPart:
    """One JSONL part of a manifest (a local path or a URL such as ``gs://b/p.jsonl``)."""

    path: str
    size: int  # bytes

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]


@dataclasses.dataclass(frozen=True)
class WorkUnit:
    """Lines of one part whose first byte lies in ``[start, end)``: the unit of preparation
    work. Units follow the parts in path order, then by offset; unit ``k`` has ``index`` k."""

    index: int
    part: ManifestPart
    start: int
    end: int


def manifest_parts(spec: str | Path) -> list[ManifestPart]:
    """The JSONL parts of a manifest given as a file, a directory (its ``*.jsonl`` files) or a
    glob (``data/part-*.jsonl``), local or ``gs://``; sorted by path. An empty match is an
    error naming the spec; a part that cannot be read is kept (and reported when read)."""
    spec = str(spec)
    if any(c in spec for c in "*?["):
        root, pattern = _glob_root(spec)
        paths = sorted(str(p) for p in epath.Path(root).glob(pattern))
    else:
        path = epath.Path(spec)
        paths = sorted(str(p) for p in path.glob("*.jsonl")) if path.is_dir() else [spec]
    if not paths:
        raise ManifestError(f"manifest {spec} matches no JSONL part", "missing manifest part")
    parts = []
    for p in paths:
        try:
            size = epath.Path(p).stat().length
        except OSError:  # listed but unreadable: one empty unit, reported when it is read
            size = 0
        parts.append(ManifestPart(p, size))
    return parts


def _glob_root(spec: str) -> tuple[str, str]:
    """``"gs://b/dir/p-*.jsonl"`` -> (``"gs://b/dir"``, ``"p-*.jsonl"``): the longest prefix of
    whole path components without a wildcard."""
    parts = spec.split("/")
    first = next(i for i, p in enumerate(parts) if any(c in p for c in "*?["))
    return "/".join(parts[:first]) or ".", "/".join(parts[first:])


def plan_units(parts: list[ManifestPart], chunk_bytes: int) -> list[WorkUnit]:
    """Every part cut into byte ranges of at most ``chunk_bytes`` (an empty part is one
    empty unit): the same plan on every host, from the parts' sizes alone."""
    units = []
    for part in parts:
        for start in range(0, max(part.size, 1), chunk_bytes):
            units.append(WorkUnit(len(units), part, start, min(start + chunk_bytes, part.size)))
    return units


def read_unit(unit: WorkUnit) -> Iterator[tuple[str, Example | ManifestError]]:
    """Yields ``(where, example or the error)`` for every non-blank line starting in the unit.

    ``where`` names the line: ``part.jsonl:12`` in a unit that starts the part, else
    ``part.jsonl@<byte offset>``. A line that is not UTF-8 is a :class:`ManifestError`.
    Reads the unit's bytes plus the rest of its last line, nothing else.
    """
    root = epath.Path(unit.part.path).parent
    with epath.Path(unit.part.path).open("rb") as f:
        offset = unit.start
        if unit.start:  # a line starting before the unit belongs to the previous one
            f.seek(unit.start - 1)
            offset += len(f.readline()) - 1
        number = 0
        while offset < unit.end:
            raw = f.readline()
            if not raw:
                break
            number += 1
            where = f"{unit.part.name}:{number}" if unit.start == 0 else f"{unit.part.name}@{offset}"
            offset += len(raw)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield where, ManifestError(f"{where}: not UTF-8 ({e})", "not UTF-8")
                continue
            if not line.strip():
                continue
            try:
                yield where, parse_line(line, where, root)
            except ManifestError as e:
                yield where, e
