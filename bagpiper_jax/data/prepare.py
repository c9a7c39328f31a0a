"""``bagpiper-prepare``: JSONL manifest -> ArrayRecord shards of prepared examples + index.

Manifest lines are cut into shards of ``data.examples_per_shard`` consecutive lines;
process ``p`` of ``n`` (``jax.process_index()/process_count()``) prepares the shards
``k`` with ``k % n == p``, so the same command scales over the hosts of a pod. A shard is
written to a temporary name and renamed with its metadata file when complete, so an
interrupted run resumes by skipping finished shards. Per example:

- text -> token ids (the ``data.tokenizer`` tokenizer);
- assistant audio -> 16 kHz mono -> XCodec codes (jitted, length-bucketed batches);
- user/system audio -> 16 kHz mono -> log-mel (truncated at ``data.max_audio_seconds``).

A bad input (missing/corrupt/empty/NaN audio, empty or non-string text, malformed line,
an example longer than a row that is not text-only) never aborts the run: it is skipped
and listed with its reason in ``report.json``; counts are printed at the end. Output::

    OUT/shard-00000.array_record   records (see bagpiper_jax.data.records)
    OUT/shard-00000.json           per-shard ids, frame lengths, text-only flags, clip mel lengths, skips
    OUT/index.json                 shards, counts, config hash (what the pipeline reads)
    OUT/report.json                every skipped input with its reason, counts per reason
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import time
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

from bagpiper_jax.audio_encoder.config import output_lengths
from bagpiper_jax.audio_encoder.features import log_mel
from bagpiper_jax.audio_io import AudioError, load_audio
from bagpiper_jax.config import Config, load_config
from bagpiper_jax.data.manifest import Example, ManifestError, read_manifest
from bagpiper_jax.data.records import PreparedExample, PreparedMessage, encode_record
from bagpiper_jax.data.template import example_frames
from bagpiper_jax.data.text_tokenizer import TextTokenizer
from bagpiper_jax.vocab import Vocab

MEL_BUCKET_SAMPLES = 16_000 * 8  # log-mel compiles once per 8 s of clip length


class Skip(ValueError):
    """An input that is skipped; ``kind`` is its report category."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


def config_hash(cfg: Config) -> str:
    """Hash of everything that changes prepared records."""
    relevant = {"vocab": {k: getattr(cfg.model, k) for k in ("num_special", "text_vocab_size", "num_streams",
                                                            "codebook_size")},
                "tokenizer": cfg.data.tokenizer, "codec": cfg.data.codec,
                "max_audio_seconds": cfg.data.max_audio_seconds, "row_frames": cfg.data.row_frames}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


class Preparer:
    """Turns manifest examples into prepared records (text, codes, log-mel)."""

    def __init__(self, cfg: Config):
        from bagpiper_jax.codec.tokenizer import XCodecTokenizer
        self.cfg = cfg
        self.vocab = Vocab.from_config(cfg.model)
        if not cfg.data.tokenizer:
            raise ValueError("data.tokenizer must name a tokenizer.json (or its directory)")
        if not cfg.data.codec:
            raise ValueError("data.codec must name a converted XCodec params directory")
        self.tokenizer = TextTokenizer(cfg.data.tokenizer)
        self.tokenizer.check_fits(cfg.model.text_vocab_size)
        self.codec = XCodecTokenizer.load(cfg.data.codec)
        if self.codec.cfg.codebook_size != cfg.model.codebook_size:
            raise ValueError(f"codec {cfg.data.codec} has codebook_size {self.codec.cfg.codebook_size}, "
                             f"model.codebook_size is {cfg.model.codebook_size}")
        self.max_samples = int(cfg.data.max_audio_seconds * 16_000)

    def _mel(self, wav: np.ndarray) -> np.ndarray:
        wav = wav[:self.max_samples]
        padded = np.zeros(-(-len(wav) // MEL_BUCKET_SAMPLES) * MEL_BUCKET_SAMPLES, np.float32)
        padded[:len(wav)] = wav
        mel, frames = log_mel(padded[None], np.asarray([len(wav)], np.int32))
        return np.asarray(mel[0, :int(frames[0])])

    def prepare(self, examples: list[Example]) -> tuple[list[PreparedExample], list[tuple[str, str, str]]]:
        """Prepared examples (manifest order) and ``(id, kind, reason)`` per skipped one."""
        skipped, staged, to_encode = [], [], []
        for ex in examples:
            try:
                messages = []
                for m in ex.messages:
                    if m.modality == "text":
                        tokens = self.tokenizer.encode(m.content)
                        if not len(tokens):
                            raise Skip(f"text {m.content!r} has no tokens", "empty text")
                        messages.append(PreparedMessage(m.role, m.modality, "text", tokens))
                        continue
                    wav = load_audio(m.content)
                    if len(wav) < self.codec.hop_length:
                        raise Skip(f"audio file {m.content} is shorter than one codec frame "
                                   f"({self.codec.hop_length} samples at 16 kHz)", "too short audio")
                    if m.role == "assistant":
                        to_encode.append((len(staged), len(messages), wav[:self.max_samples]))
                        messages.append(PreparedMessage(m.role, m.modality, "codes", np.zeros((0, 0))))
                    else:
                        messages.append(PreparedMessage(m.role, m.modality, "mel", self._mel(wav)))
                staged.append((ex, messages))
            except (AudioError, Skip) as e:
                skipped.append((ex.id, e.kind, str(e)))
        codes = self.codec.encode([w for _, _, w in to_encode]) if to_encode else []
        for (i, j, _), c in zip(to_encode, codes):
            m = staged[i][1][j]
            staged[i][1][j] = PreparedMessage(m.role, m.modality, "codes", np.asarray(c, np.int16))
        out = []
        for ex, messages in staged:
            prepared = PreparedExample(ex.id, ex.task, 0, tuple(messages))
            frames = example_frames(prepared, self.vocab, output_lengths)
            text_only = all(m.kind == "text" for m in messages)
            if frames > self.cfg.data.row_frames and not text_only:
                skipped.append((ex.id, "over-long", f"{frames} frames > data.row_frames={self.cfg.data.row_frames}"))
                continue
            out.append(PreparedExample(ex.id, ex.task, frames, tuple(messages)))
        return out, skipped


def write_shard(out_dir: Path, k: int, records: list[PreparedExample], skips: list[dict]):
    from array_record.python.array_record_module import ArrayRecordWriter
    name = f"shard-{k:05d}.array_record"
    tmp = out_dir / f".{name}.tmp"
    writer = ArrayRecordWriter(str(tmp), "group_size:1")
    for r in records:
        writer.write(encode_record(r))
    writer.close()
    os.replace(tmp, out_dir / name)
    meta = {"file": name, "count": len(records), "ids": [r.id for r in records],
            "frames": [r.frames for r in records],
            "text_only": [all(m.kind == "text" for m in r.messages) for r in records],
            "mel_frames": [[len(m.array) for m in r.messages if m.kind == "mel"] for r in records], "skipped": skips}
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
                item = ManifestError(f"{Path(manifest).name}:{line}: id {item.id!r} repeats an earlier line",
                                     "duplicate id")
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
    index = {"shards": [{**{k: m[k] for k in ("file", "count", "ids", "frames", "text_only")},
                         "mel_frames": m.get("mel_frames")} for m in metas],
             "examples": sum(m["count"] for m in metas), "skipped": len(skipped),
             "config_hash": config_hash(cfg)}
    report = {"prepared": index["examples"], "skipped": len(skipped), "by_reason": dict(reasons),
              "inputs": skipped}
    (out_dir / "index.json").write_text(json.dumps(index))
    (out_dir / "report.json").write_text(json.dumps(report, indent=1))
    return report


def prepare_manifest(cfg: Config, manifest: str | Path, out_dir: str | Path, *, process_index: int = 0,
                     process_count: int = 1, progress: bool = True) -> dict | None:
    """Prepares this process's shards; process 0 writes index.json/report.json once all are
    there (after a barrier when there are several processes). Returns the report there."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shards = _shard_lines(Path(manifest), cfg.data.examples_per_shard)
    mine = [k for k in range(len(shards)) if k % process_count == process_index
            and not (out_dir / f"shard-{k:05d}.json").is_file()]
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
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("bagpiper-prepare")
    if process_index == 0:
        return write_index(cfg, out_dir, len(shards))
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bagpiper-prepare", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("overrides", nargs="*", help="config overrides, key.path=value")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    report = prepare_manifest(cfg, args.manifest, args.out, process_index=jax.process_index(),
                              process_count=jax.process_count())
    if report is not None:
        print(json.dumps({k: report[k] for k in ("prepared", "skipped", "by_reason")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
