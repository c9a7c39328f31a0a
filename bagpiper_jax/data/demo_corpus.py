"""The embedded demo corpus: synthetic sounds with rich captions (no downloads).

Each clip is one of five sound types — sine tone, major chord, rising/falling chirp,
white-noise burst, near silence — with a varied pitch, loudness and duration, and a
caption that states all of them, e.g. "A loud high sine tone at 1200 hertz, lasting 1.5
seconds." Examples are ``audio_to_text`` (caption a clip), ``text_to_audio`` (make the
clip for a caption) and caption-then-process dialogues (caption, then answer "what kind
of sound is this?"). A held-out manifest uses fresh clips and captions.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from bagpiper_jax.audio_io import SAMPLE_RATE, save_audio

KINDS = ("sine tone", "major chord", "chirp", "noise burst", "silence")
LOUDNESS = {"quiet": 0.05, "moderate": 0.2, "loud": 0.6}
QUESTION = "What kind of sound is this?"


@dataclasses.dataclass(frozen=True)
class Sound:
    """One synthetic demo sound: its kind and parameters, caption, answer and waveform."""

    kind: str
    pitch: float  # hertz (chirps start here)
    loudness: str
    seconds: float
    rising: bool = True

    def caption(self) -> str:
        register = "low" if self.pitch < 300 else "high" if self.pitch > 800 else "mid"
        length = f"lasting {self.seconds:g} seconds"
        if self.kind == "silence":
            return f"Near silence, {length}."
        if self.kind == "noise burst":
            return f"A {self.loudness} burst of white noise, {length}."
        if self.kind == "chirp":
            end = self.pitch * (4 if self.rising else 0.25)
            direction = "rising" if self.rising else "falling"
            return f"A {self.loudness} {direction} chirp sweeping from {self.pitch:.0f} to {end:.0f} hertz, {length}."
        return f"A {self.loudness} {register} {self.kind} at {self.pitch:.0f} hertz, {length}."

    def answer(self) -> str:
        return f"It is a {self.kind}."

    def render(self, rng: np.random.Generator) -> np.ndarray:
        """float32 ``[samples]`` at 16 kHz with 10 ms fades."""
        n = int(self.seconds * SAMPLE_RATE)
        t = np.arange(n) / SAMPLE_RATE
        amp = LOUDNESS[self.loudness]
        if self.kind == "sine tone":
            wav = np.sin(2 * np.pi * self.pitch * t)
        elif self.kind == "major chord":
            wav = sum(np.sin(2 * np.pi * self.pitch * r * t) for r in (1.0, 1.25, 1.5)) / 3
        elif self.kind == "chirp":
            end = self.pitch * (4 if self.rising else 0.25)
            freq = self.pitch * (end / self.pitch) ** (t / self.seconds)
            wav = np.sin(2 * np.pi * np.cumsum(freq) / SAMPLE_RATE)
        elif self.kind == "noise burst":
            wav = rng.uniform(-1, 1, n)
        else:
            wav, amp = rng.normal(0, 1, n), 0.002
        fade = np.minimum(1.0, np.minimum(np.arange(n), np.arange(n)[::-1]) / (0.01 * SAMPLE_RATE))
        return (amp * wav * fade).astype(np.float32)


def random_sound(rng: np.random.Generator) -> Sound:
    return Sound(
        kind=KINDS[rng.integers(len(KINDS))],
        pitch=float(np.round(rng.uniform(110, 1760), -1)),
        loudness=list(LOUDNESS)[rng.integers(len(LOUDNESS))],
        seconds=float(rng.choice([0.5, 0.8, 1.0, 1.5, 2.0])),
        rising=bool(rng.integers(2)),
    )


def _example(i: int, sound: Sound, audio: str, rng: np.random.Generator, prefix: str) -> dict:
    task = ("audio_to_text", "text_to_audio", "dialogue")[int(rng.choice(3, p=[0.4, 0.4, 0.2]))]
    ex = {"id": f"{prefix}{i:05d}", "task": task, "sound": dataclasses.asdict(sound)}
    if task == "dialogue":
        ex["dialogue"] = [
            ["user", "audio", audio],
            ["user", "text", QUESTION],
            ["assistant", "text", sound.caption()],
            ["assistant", "text", sound.answer()],
        ]
    else:
        ex.update(text1=sound.caption(), audio1=audio)
    return ex


def write_demo_corpus(out_dir: str | Path, examples: int, heldout: int, seed: int = 0) -> dict:
    """Writes ``wav/*.wav``, ``manifest.jsonl`` and ``heldout.jsonl`` under ``out_dir``.

    Returns the paths and counts. Manifest lines carry a ``sound`` field (the generating
    parameters) that the pipeline ignores and evaluations read.
    """
    out_dir = Path(out_dir)
    (out_dir / "wav").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = {}
    for name, count, prefix in (("manifest.jsonl", examples, "demo"), ("heldout.jsonl", heldout, "held")):
        lines = []
        for i in range(count):
            sound = random_sound(rng)
            audio = f"wav/{prefix}{i:05d}.wav"
            save_audio(out_dir / audio, sound.render(rng))
            lines.append(json.dumps(_example(i, sound, audio, rng, prefix)))
        (out_dir / name).write_text("\n".join(lines) + "\n")
        paths[name] = str(out_dir / name)
    return paths


def captions(manifest: str | Path) -> list[str]:
    """Every text of a demo manifest (what the demo tokenizer is trained on)."""
    texts = []
    for line in Path(manifest).read_text().splitlines():
        ex = json.loads(line)
        texts += [t for k, t in ex.items() if k.startswith("text")]
        texts += [c for _, modality, c in ex.get("dialogue", []) if modality == "text"]
    return texts
