"""``bagpiper-generate``: caption / answer about an audio file, or make audio from text.

    bagpiper-generate --checkpoint CKPT --config CFG --audio IN.wav [--question Q]
    bagpiper-generate --checkpoint CKPT --config CFG --text "A loud low sine tone." --out OUT.wav
    (both at once work too; trailing key=value arguments override the config, e.g. the
    per-modality settings generate.audio.temperature=0.9 generate.text.top_k=0
    generate.audio.guidance_scale=2 generate.audio.max_step=1024, or generate.samples=4)

``CKPT``: a model checkpoint, a run directory (latest step) or ``<run>/checkpoints/<step>``.
Understanding writes the clip's rich caption and, with ``--question``, the answer after it
(caption-then-answer). Generation writes a rich caption of the text, then the audio
(``--no-caption``: the audio directly), to ``OUT.wav`` (``OUT-<k>.wav`` per sample when
``generate.samples`` > 1), 16 kHz 16-bit PCM. Those are the modalities each answer is made to
start with (the reference's ``enforce_modality``); ``--enforce-modality text,audio`` sets
them for every run instead. Prints one JSON object: texts, output paths and timing (decoded
frames, decode seconds excluding compilation, frames/s).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import numpy as np

from bagpiper_jax.audio_io import SAMPLE_RATE, save_audio
from bagpiper_jax.cli.command import add_common_flags, run
from bagpiper_jax.config import load_config
from bagpiper_jax.generate import Generator
from bagpiper_jax.sharding import make_mesh
from bagpiper_jax.vocab import MODALITY_IDS


def _wav_paths(out: str, samples: int) -> list[Path]:
    path = Path(out)
    if samples == 1:
        return [path]
    return [path.with_name(f"{path.stem}-{k}{path.suffix}") for k in range(samples)]


def _modalities(value: str) -> tuple[str, ...]:
    modalities = tuple(m.strip() for m in value.split(",") if m.strip())
    bad = [m for m in modalities if m not in MODALITY_IDS]
    if bad or not modalities:
        raise argparse.ArgumentTypeError(f"modalities must be a comma-separated list of text/audio, got {value!r}")
    return modalities


def _generate(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    devices = jax.devices()[: args.devices] if args.devices else None
    generator = Generator.from_checkpoint(args.checkpoint, cfg, make_mesh(cfg.mesh, devices))
    result, runs = {}, []
    if args.audio:
        messages = [("user", "audio", str(Path(args.audio).absolute()))]
        plan = ("text",)
        if args.question:
            messages.append(("user", "text", args.question))
            plan = ("text", "text")
        run = generator.generate([messages], args.enforce_modality or plan, seed=args.seed)
        runs.append(run)
        answers = run.answers[0]
        result["understanding"] = {
            "audio": args.audio,
            "caption": [a.texts()[0] if a.texts() else "" for a in answers],
            "finished": [a.finished for a in answers],
        }
        if args.question:
            result["understanding"].update(
                question=args.question, answer=[a.texts()[1] if len(a.texts()) > 1 else "" for a in answers]
            )
    if args.text:
        plan = ("audio",) if args.no_caption else ("text", "audio")
        run = generator.generate([[("user", "text", args.text)]], args.enforce_modality or plan, seed=args.seed)
        runs.append(run)
        answers = run.answers[0]
        paths = _wav_paths(args.out, len(answers))
        for path, answer in zip(paths, answers):
            path.parent.mkdir(parents=True, exist_ok=True)
            wavs = answer.audios()
            save_audio(path, wavs[0] if wavs else np.zeros((0,), np.float32), SAMPLE_RATE)
        result["generation"] = {
            "text": args.text,
            "out": [str(p) for p in paths],
            "audio_seconds": [round(len(a.audios()[0]) / SAMPLE_RATE, 3) if a.audios() else 0.0 for a in answers],
            "finished": [a.finished for a in answers],
        }
        if not args.no_caption:
            result["generation"]["caption"] = [a.texts()[0] if a.texts() else "" for a in answers]
    frames = sum(r.frames for r in runs)
    decode_s = sum(r.decode_s for r in runs)
    result["timing"] = {
        "frames": frames,
        "decode_s": round(decode_s, 3),
        "compile_s": round(sum(r.compile_s for r in runs), 3),
        "frames_per_s": round(frames / decode_s, 1) if decode_s else None,
    }
    print(json.dumps(result), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bagpiper-generate", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="model checkpoint, run directory or run step")
    parser.add_argument("--config", required=True, help="run config YAML (the model must match the checkpoint)")
    parser.add_argument("--audio", help="audio file to caption (understanding)")
    parser.add_argument("--question", help="question about --audio, answered after the caption")
    parser.add_argument("--text", help="description to generate audio for")
    parser.add_argument("--out", help="output wav for --text")
    parser.add_argument("--no-caption", action="store_true", help="generate audio without a rich caption first")
    parser.add_argument(
        "--enforce-modality",
        type=_modalities,
        default=(),
        help="comma-separated modalities the answers start with (text, audio), e.g. text,audio "
        "(default: text for --audio, text,text with --question, text,audio for --text)",
    )
    parser.add_argument("--seed", type=int, default=None, help="PRNG seed (default generate.seed)")
    parser.add_argument("--devices", type=int, default=0, help="use the first N devices (default: all)")
    parser.add_argument("overrides", nargs="*", help="config overrides, key.path=value")
    add_common_flags(parser)
    args = parser.parse_intermixed_args(argv)
    if not args.audio and not args.text:
        parser.error("give --audio (caption/answer) and/or --text (audio generation)")
    if args.question and not args.audio:
        parser.error("--question needs --audio")
    if args.text and not args.out:
        parser.error("--text needs --out OUT.wav")
    return run(parser.prog, args, _generate)


if __name__ == "__main__":
    raise SystemExit(main())
