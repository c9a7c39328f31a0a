"""One evaluation run: generate every item's output through a :class:`Generator` (batches
of one plan, one compiled program per plan and prompt shape), score each task, and write
``results.jsonl``, ``summary.json`` and the generated wavs.

A bad item never ends the run: manifest errors come in as :class:`ItemError` s, and when a
batch's generation fails on an item's input, each prompt of the batch is prepared alone to
find the items at fault; they get the error and the rest are generated. Each task's scores
are :class:`Score` s (value, items, bootstrap 95% interval); metrics that cannot run (no
CLAP or ASR model, no ``aac-metrics``, no Java, no ``jiwer``) are listed under ``skipped``
with the reason.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bagpiper_jax.audio_encoder.frozen import mel_bins
from bagpiper_jax.audio_io import SAMPLE_RATE, load_audio, save_audio
from bagpiper_jax.config import Config
from bagpiper_jax.errors import BagpiperError
from bagpiper_jax.eval.captions import caption_scores
from bagpiper_jax.eval.choices import extract_choice, mcq_prompt
from bagpiper_jax.eval.embeddings import ClapEmbedder, clap_score, frechet_score
from bagpiper_jax.eval.manifest import TASKS, EvalItem, ItemError
from bagpiper_jax.eval.scores import mean_score
from bagpiper_jax.eval.speech import JIWER_MISSING, Transcriber, normalise, wer_score, word_errors
from bagpiper_jax.generate import Answer, Generator
from bagpiper_jax.generate.prompts import templated_prompt

# The modalities each task's answer is made to start with (caption first, then the answer
# or the audio: the reference's enforce_modality).
PLANS = {
    "caption": ("text",),
    "mcq": ("text", "text"),
    "open_qa": ("text", "text"),
    "text_to_audio": ("text", "audio"),
    "tts": ("text", "audio"),
}
MIN_SCORED_SECONDS = 0.1  # shorter (or empty) generated audio is scored padded with silence


@dataclasses.dataclass
class MetricModels:
    """The models some metrics need (None: those metrics are skipped with ``reasons``)."""

    clap: ClapEmbedder | None = None
    asr: Transcriber | None = None
    reasons: dict[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def load(cls, cfg: Config, tasks: set[str]) -> MetricModels:
        """The models ``assets.clap`` / ``assets.asr`` name, for the tasks that need them."""
        models = cls()
        if "text_to_audio" in tasks:
            if cfg.assets.clap:
                models.clap = ClapEmbedder(cfg.assets.clap)
            else:
                models.reasons["clap"] = "assets.clap (an HF ClapModel directory) is not set"
        if "tts" in tasks:
            if cfg.assets.asr:
                models.asr = Transcriber(cfg.assets.asr)
            else:
                models.reasons["asr"] = "assets.asr (an HF speech-recognition model directory) is not set"
        return models


def item_prompt(item: EvalItem) -> list[tuple[str, str, str]]:
    """The user messages of an item's prompt."""
    if item.task == "caption":
        return [("user", "audio", item.audio)]
    if item.task == "mcq":
        return [
            ("user", "audio", item.audio),
            ("user", "text", mcq_prompt(item.question, item.choices, item.show_choices)),
        ]
    if item.task == "open_qa":
        return [("user", "audio", item.audio), ("user", "text", item.question)]
    return [("user", "text", item.text)]


def item_output(item: EvalItem, answer: Answer) -> dict:
    """What the model made for an item: its rich caption, the answer (mcq, open_qa) or the
    16 kHz waveform (text_to_audio, tts; ``wav``), and whether the answer ended."""
    texts = answer.texts()
    out = {"caption": texts[0] if texts else "", "finished": answer.finished, "frames": answer.frames}
    if item.task in ("mcq", "open_qa"):
        out["answer"] = texts[1] if len(texts) > 1 else ""
    if item.task in ("text_to_audio", "tts"):
        audios = answer.audios()
        out["wav"] = audios[0] if audios else np.zeros((0,), np.float32)
    return out


def generate_outputs(
    generator: Generator, items: Sequence[EvalItem], batch: int = 8, seed: int | None = None, progress: bool = True
) -> dict[str, dict]:
    """Every item's output (or ``{"error": ...}``) by id, generated ``batch`` items at a time,
    each batch of one plan (:data:`PLANS`)."""
    outputs = {}
    bar = tqdm(total=len(items), disable=not progress, unit="item", desc="generate", dynamic_ncols=True)

    def run(chunk: list[EvalItem]):
        try:
            prompts = [item_prompt(i) for i in chunk]
            generation = generator.generate(prompts, PLANS[chunk[0].task], samples=1, seed=seed)
        except BagpiperError as e:
            if len(chunk) == 1:
                outputs[chunk[0].id] = {"error": f"generation failed: {e}"}
                return
            good = []
            for item in chunk:  # find the items at fault by preparing each prompt alone (no decoding)
                try:
                    templated_prompt(generator.preparer, item_prompt(item), mel_bins(generator.tower), item.id)
                    good.append(item)
                except BagpiperError as error:
                    outputs[item.id] = {"error": f"generation failed: {error}"}
            for part in [good] if len(good) < len(chunk) else [[item] for item in chunk]:
                if part:
                    run(part)  # the rest together; item by item when no single prompt was at fault
            return
        for item, answers in zip(chunk, generation.answers):
            outputs[item.id] = item_output(item, answers[0])

    for plan in dict.fromkeys(PLANS.values()):  # tasks of one plan share batches (and compiled programs)
        group = [i for i in items if PLANS[i.task] == plan]
        for start in range(0, len(group), batch):
            run(group[start : start + batch])
            bar.update(len(group[start : start + batch]))
    bar.close()
    return outputs


def _scorable(wav: np.ndarray) -> np.ndarray:
    return np.pad(wav, (0, max(0, int(MIN_SCORED_SECONDS * SAMPLE_RATE) - len(wav))))


def score_task(task: str, items: list[EvalItem], outputs: list[dict], models: MetricModels) -> dict:
    """``{"scores": {name: Score}, "per_item": [{name: value}], "skipped": {name: reason}}``
    of one task's items and outputs (all generated without error)."""
    scores, per_item, skipped = {}, [{} for _ in items], {}
    if task == "caption":
        scores, per_item, skipped = caption_scores([o["caption"] for o in outputs], [list(i.references) for i in items])
    elif task == "mcq":
        correct = []
        for item, out, own in zip(items, outputs, per_item):
            picked = extract_choice(out["answer"], list(item.choices))
            out["extracted"] = None if picked is None else item.choices[picked]
            own["correct"] = float(picked is not None and item.choices[picked] == item.answer)
            correct.append(own["correct"])
        scores["accuracy"] = mean_score(correct)
        for category in sorted({i.category for i in items if i.category}):
            in_category = [c for i, c in zip(items, correct) if i.category == category]
            scores[f"accuracy/{_file_name(category)}"] = mean_score(in_category)
    elif task == "open_qa":
        for item, out, own in zip(items, outputs, per_item):
            answer = " " + normalise(out["answer"]) + " "
            refs = [normalise(r) for r in item.references]
            own["exact_match"] = float(normalise(out["answer"]) in refs)
            own["contains"] = float(any(f" {r} " in answer for r in refs if r))
        for name in ("exact_match", "contains"):
            scores[name] = mean_score([own[name] for own in per_item])
    elif task == "text_to_audio":
        scores, skipped = _audio_scores(items, outputs, per_item, models)
    elif task == "tts":
        scores, skipped = _speech_scores(items, outputs, per_item, models)
    return {"scores": scores, "per_item": per_item, "skipped": skipped}


def _audio_scores(items, outputs, per_item, models: MetricModels) -> tuple[dict, dict]:
    if models.clap is None:
        reason = models.reasons.get("clap", "no CLAP model")
        return {}, {"clap_score": reason, "frechet_distance": reason}
    generated = models.clap.audio([_scorable(o["wav"]) for o in outputs])
    texts = models.clap.text([i.text for i in items])
    scores, skipped = {"clap_score": clap_score(generated, texts)}, {}
    for own, a, t in zip(per_item, generated, texts):
        own["clap_score"] = float(a @ t)
    paired = [k for k, i in enumerate(items) if i.audio]
    if len(paired) >= 2:
        reference = models.clap.audio([load_audio(items[k].audio) for k in paired])
        scores["frechet_distance"] = frechet_score(generated[paired], reference)
        scores["clap_score_reference"] = clap_score(reference, texts[paired])
    else:
        skipped["frechet_distance"] = f"needs at least 2 items with a reference clip, got {len(paired)}"
    return scores, skipped


def _speech_scores(items, outputs, per_item, models: MetricModels) -> tuple[dict, dict]:
    if models.asr is None:
        return {}, {"wer": models.reasons.get("asr", "no ASR model")}
    for out, text in zip(outputs, models.asr([_scorable(o["wav"]) for o in outputs])):
        out["transcript"] = text
    try:
        errors = word_errors([o["transcript"] for o in outputs], [i.text for i in items])
    except ImportError:
        return {}, {"wer": JIWER_MISSING}
    for own, (wrong, words) in zip(per_item, errors):
        own["wer"] = float(wrong / max(words, 1.0))
    return {"wer": wer_score(errors)}, {}


def _file_name(name: str) -> str:
    """``name`` safe as a file name and a TensorBoard tag (other characters become ``_``)."""
    return re.sub(r"[^\w.-]", "_", name)


def evaluate(
    generator: Generator,
    items: Sequence[EvalItem],
    errors: Sequence[ItemError] = (),
    models: MetricModels | None = None,
    out_dir: str | Path | None = None,
    batch: int = 8,
    seed: int | None = None,
    progress: bool = True,
    meta: dict | None = None,
) -> dict:
    """Generates, scores and (with ``out_dir``) writes ``results.jsonl``, ``summary.json``
    and ``wavs/<id>.wav``. Returns the summary: per task its items, errors, scores (as
    JSON: value, n, ci95) and skipped metrics."""
    t0 = time.perf_counter()
    models = MetricModels() if models is None else models
    outputs = generate_outputs(generator, items, batch, seed, progress)
    results = {e.line: _error_record(e) for e in errors}  # by manifest line
    summary = {**(meta or {}), "items": len(items) + len(errors), "errors": len(errors), "tasks": {}}
    by_task = {t: [i for i in items if i.task == t] for t in TASKS}
    for task, group in by_task.items():
        task_errors = [e for e in errors if e.task == task]
        if not group and not task_errors:
            continue
        ok = [i for i in group if "error" not in outputs[i.id]]
        entry = {"items": len(group) + len(task_errors), "errors": len(task_errors) + len(group) - len(ok)}
        if ok:
            scored = score_task(task, ok, [outputs[i.id] for i in ok], models)
            entry.update(scores={k: s.to_json() for k, s in scored["scores"].items()}, skipped=scored["skipped"])
            item_scores = dict(zip([i.id for i in ok], scored["per_item"]))
        else:
            entry.update(scores={}, skipped={}, note="no item could be scored")
            item_scores = {}
        summary["tasks"][task] = entry
        for item in group:
            results[item.line] = _item_record(item, outputs[item.id], item_scores.get(item.id), out_dir)
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        with open(out_dir / "results.jsonl", "w") as f:
            for _, record in sorted(results.items()):
                f.write(json.dumps(record) + "\n")
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _error_record(error: ItemError) -> dict:
    return {"id": error.id, "task": error.task, "line": error.line, "input": error.raw, "error": error.error}


def _item_record(item: EvalItem, output: dict, scores: dict | None, out_dir: Path | str | None) -> dict:
    record = {"id": item.id, "task": item.task, "input": item.raw}
    if "error" in output:
        return {**record, "error": output["error"]}
    output = dict(output)
    wav = output.pop("wav", None)
    if wav is not None:
        output["audio_seconds"] = round(len(wav) / SAMPLE_RATE, 3)
        if out_dir is not None:
            path = Path(out_dir) / "wavs" / f"{_file_name(item.id)}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            save_audio(path, wav)
            output["wav"] = str(path)
    return {**record, "output": output, "scores": scores or {}}


def flat_scores(summary: dict) -> dict[str, float]:
    """``<task>/<metric>`` -> value, for metrics.jsonl and TensorBoard."""
    return {
        f"{task}/{name}": score["value"]
        for task, entry in summary["tasks"].items()
        for name, score in entry["scores"].items()
    }


def format_table(summary: dict) -> str:
    """The summary as a fixed-width table: task, metric, value, items, 95% interval (or why
    a metric was skipped)."""
    rows = [("task", "metric", "value", "n", "95% CI")]
    for task, entry in summary["tasks"].items():
        for name, s in entry["scores"].items():
            rows.append((task, name, f"{s['value']:.4f}", str(s["n"]), f"[{s['ci95'][0]:.4f}, {s['ci95'][1]:.4f}]"))
        for name, reason in entry["skipped"].items():
            rows.append((task, name, "skipped", "", reason))
        if entry["errors"]:
            rows.append((task, "errors", str(entry["errors"]), str(entry["items"]), "see results.jsonl"))
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    return "\n".join("  ".join([*(c.ljust(w) for c, w in zip(row, widths)), row[4]]).rstrip() for row in rows)
