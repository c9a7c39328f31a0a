"""The JSONL corpus manifest: one example per line, normalised to a list of messages.

Line formats (``id`` and ``task`` always present)::

    {"id": "a1", "task": "text_to_audio", "text1": "a bright 440 Hz tone", "audio1": "a1.wav"}
    {"id": "a2", "task": "audio_to_text", "audio1": "a2.flac", "text1": "a dog barks twice"}
    {"id": "t1", "task": "text_only", "text1": "some text"}
    {"id": "d1", "task": "dialogue", "dialogue": [["system", "text", "..."], ["user", "audio", "x.wav"],
                                                  ["assistant", "text", "caption"], ["assistant", "audio", "y.wav"]]}

Task to messages: ``text_to_audio`` = user text1 -> assistant audio1; ``audio_to_text``
= user audio1 -> assistant text1; ``text_only`` = assistant text1 (extra ``textN`` fields
become further assistant text messages). Audio paths are resolved against the manifest's
folder. A malformed line raises :class:`ManifestError` naming the line and field; the
caller counts it as skipped.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

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


def _audio(entry: dict, field: str, where: str, root: Path) -> str:
    path = Path(_text(entry, field, where))
    return str(path if path.is_absolute() else (root / path).resolve())


def parse_line(line: str, where: str, root: Path) -> Example:
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


def _dialogue(entry: dict, where: str, root: Path) -> list[Message]:
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
    return messages


def read_manifest(path: str | Path) -> Iterator[tuple[int, Example | ManifestError]]:
    """Yields ``(line_number, example or the error)`` for every non-blank line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist")
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield number, parse_line(line, f"{path.name}:{number}", path.parent)
            except ManifestError as e:
                yield number, e
