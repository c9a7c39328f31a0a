"""The eval manifest: JSONL, one item per line (format in README.md and
docs/evaluation.md). Audio paths are resolved against the manifest's folder.

    {"id": "c1", "task": "caption", "audio": "wav/c1.wav", "references": ["A dog barks.", "A dog barking."]}
    {"id": "q1", "task": "mcq", "audio": "wav/q1.wav", "question": "Which animal?",
     "choices": ["cat", "dog"], "answer": "dog", "category": "sound"}
    {"id": "o1", "task": "open_qa", "audio": "wav/o1.wav", "question": "How many barks?", "references": ["two"]}
    {"id": "g1", "task": "text_to_audio", "text": "A dog barks twice.", "audio": "wav/g1.wav"}
    {"id": "s1", "task": "tts", "text": "Hello there."}

A line that is not a valid item (bad JSON, a missing or mistyped field, a missing clip,
empty references, an answer that is not among the choices, a repeated id) becomes an
:class:`ItemError`: the run reports it in ``results.jsonl`` and goes on.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from bagpiper_jax.errors import BagpiperError

TASKS = ("caption", "mcq", "open_qa", "text_to_audio", "tts")
# Tasks whose answer is text about a clip (the rest generate audio from text).
UNDERSTANDING = ("caption", "mcq", "open_qa")


class EvalManifestError(BagpiperError):
    """The eval manifest itself cannot be read (missing file, no valid item)."""


@dataclasses.dataclass(frozen=True)
class EvalItem:
    """One valid eval item. ``audio`` is an absolute path or "" (text_to_audio's reference clip
    is optional, tts has none); ``raw`` is the line as given."""

    id: str
    task: str
    line: int = 0  # 1-based line of the manifest
    audio: str = ""
    text: str = ""
    question: str = ""
    references: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()
    answer: str = ""
    category: str = ""
    show_choices: bool = True
    raw: dict = dataclasses.field(default_factory=dict, compare=False)


@dataclasses.dataclass(frozen=True)
class ItemError:
    """A line that is not a valid item: ``line`` (1-based), the id and task when readable,
    and the reason."""

    line: int
    id: str
    task: str
    error: str
    raw: dict | str


def _string(raw: dict, key: str, required: bool) -> str:
    value = raw.get(key, "")
    if not isinstance(value, str):
        raise ValueError(f"field {key!r} must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise ValueError(f"field {key!r} is missing or empty")
    return value


def _strings(raw: dict, key: str) -> tuple[str, ...]:
    value = raw.get(key)
    if not isinstance(value, list) or not value:
        raise ValueError(f"field {key!r} must be a non-empty list of strings")
    if not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError(f"field {key!r} holds an empty or non-string entry")
    return tuple(value)


def _clip(raw: dict, root: Path, required: bool) -> str:
    path = _string(raw, "audio", required)
    if not path:
        return ""
    resolved = Path(path) if Path(path).is_absolute() else root / path
    if not resolved.is_file():
        raise ValueError(f"audio file {resolved} not found")
    return str(resolved.absolute())


def parse_item(raw: dict, root: Path, line: int = 0) -> EvalItem:
    """One item from its JSON object; raises ValueError naming the bad field."""
    item_id, task = _string(raw, "id", True), _string(raw, "task", True)
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    fields = {"id": item_id, "task": task, "line": line, "raw": raw}
    if task in UNDERSTANDING:
        fields["audio"] = _clip(raw, root, required=True)
    if task in ("caption", "open_qa"):
        fields["references"] = _strings(raw, "references")
    if task in ("mcq", "open_qa"):
        fields["question"] = _string(raw, "question", True)
    if task == "mcq":
        choices = _strings(raw, "choices")
        answer = _string(raw, "answer", True)
        if len(choices) < 2:
            raise ValueError("an mcq needs at least two choices")
        if answer not in choices:
            raise ValueError(f"answer {answer!r} is not among the choices {list(choices)}")
        show = raw.get("show_choices", True)
        if not isinstance(show, bool):
            raise ValueError("field 'show_choices' must be true or false")
        fields.update(choices=choices, answer=answer, category=_string(raw, "category", False), show_choices=show)
    if task in ("text_to_audio", "tts"):
        fields["text"] = _string(raw, "text", True)
    if task == "text_to_audio":
        fields["audio"] = _clip(raw, root, required=False)
    return EvalItem(**fields)


def read_eval_manifest(path: str | Path, limit: int = 0) -> tuple[list[EvalItem], list[ItemError]]:
    """The valid items and the bad lines of an eval manifest (the first ``limit`` lines when
    ``limit`` > 0)."""
    path = Path(path)
    if not path.is_file():
        raise EvalManifestError(f"eval manifest {path} not found")
    items, errors, seen = [], [], set()
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    lines = [(n, line) for n, line in enumerate(lines, 1) if line.strip()]
    for number, line in lines[:limit] if limit > 0 else lines:
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as e:
            errors.append(ItemError(number, "", "", f"{path}:{number}: not valid JSON: {e}", line))
            continue
        if not isinstance(raw, dict):
            errors.append(ItemError(number, "", "", f"{path}:{number}: a line must be a JSON object", line))
            continue
        item_id, task = str(raw.get("id", "")), str(raw.get("task", ""))
        try:
            if item_id in seen:
                raise ValueError(f"id {item_id!r} is repeated")
            items.append(parse_item(raw, path.parent, number))
            seen.add(item_id)
        except ValueError as e:
            errors.append(ItemError(number, item_id, task, f"{path}:{number} ({item_id or 'no id'}): {e}", raw))
    return items, errors
