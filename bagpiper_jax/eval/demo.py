"""The demo evaluation set: three items per clip of the demo corpus's held-out split
(``corpus/heldout.jsonl``, never trained on) — ``caption`` (reference: the clip's caption),
``mcq`` (which of the five sound types it is; category: the true type) and
``text_to_audio`` (its caption, with the clip as the reference).

The MCQ asks the question the demo corpus trains on ("What kind of sound is this?") without
listing the choices, since the demo model never saw a choice list; its answer ("It is a
chirp.") is matched to a choice by text (:mod:`bagpiper_jax.eval.choices`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from bagpiper_jax.config import Config
from bagpiper_jax.data.demo import ensure_demo_prepared
from bagpiper_jax.data.demo_corpus import KINDS, QUESTION, Sound

log = logging.getLogger(__name__)


def _clip(example: dict) -> str:
    if "audio1" in example:
        return example["audio1"]
    return next(content for _, modality, content in example["dialogue"] if modality == "audio")


def demo_eval_items(heldout: str | Path, clip_prefix: str) -> list[dict]:
    """The eval items (JSON objects) of a demo held-out manifest; clip paths get
    ``clip_prefix`` (the corpus folder relative to the eval manifest)."""
    items = []
    for line in Path(heldout).read_text().splitlines():
        example = json.loads(line)
        sound, clip = Sound(**example["sound"]), f"{clip_prefix}/{_clip(example)}"
        name = example["id"]
        items += [
            {"id": f"caption-{name}", "task": "caption", "audio": clip, "references": [sound.caption()]},
            {
                "id": f"mcq-{name}",
                "task": "mcq",
                "audio": clip,
                "question": QUESTION,
                "choices": list(KINDS),
                "answer": sound.kind,
                "category": sound.kind,
                "show_choices": False,
            },
            {"id": f"t2a-{name}", "task": "text_to_audio", "text": sound.caption(), "audio": clip},
        ]
    return items


def ensure_demo_eval(cfg: Config, path: str | Path) -> Path:
    """Writes the demo eval set to ``path`` unless it exists, building the demo corpus first
    where missing (``cfg`` is a demo config: ``data.demo: true``). A set inside the demo's
    folder that is older than its held-out manifest (a demo rebuilt since) is written anew."""
    path = Path(path)
    ensure_demo_prepared(cfg)
    root = Path(cfg.data.prepared).parent
    corpus = root / "corpus"
    if path.is_file():
        inside = path.resolve().is_relative_to(root.resolve())
        if not inside or path.stat().st_mtime >= (corpus / "heldout.jsonl").stat().st_mtime:
            return path
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = Path(os.path.relpath(corpus.absolute(), path.parent.absolute())).as_posix()
    items = demo_eval_items(corpus / "heldout.jsonl", prefix)
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    log.info("wrote the demo eval set (%d items) to %s", len(items), path)
    return path
