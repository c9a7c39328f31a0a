"""The Python API of generation: a :class:`Generator` built from a checkpoint and a config.

    gen = Generator.from_checkpoint("runs/demo", load_config("configs/demo.yaml"))
    gen.caption("clip.wav")                     # rich caption
    gen.answer("clip.wav", "What kind of sound is this?")   # (caption, answer)
    gen.generate_audio("A loud low sine tone.")  # (caption, 16 kHz float32 waveform)

Caption-then-process: ``answer`` makes the model write the clip's rich caption, then the
answer; ``generate_audio`` writes a rich caption of the description, then the audio (each
enforces those segment modalities, as the reference's ``enforce_modality``).
:meth:`Generator.generate` is the general entry point: several prompts, several samples
each, any enforced modalities, per-call decoding settings.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from bagpiper_jax.audio_encoder.frozen import mel_bins
from bagpiper_jax.checkpoint.frozen_modules import load_frozen_tower
from bagpiper_jax.checkpoint.model_checkpoint import ParamsSource, is_model_checkpoint
from bagpiper_jax.config import Config, GenerateConfig
from bagpiper_jax.data.preparer import Preparer
from bagpiper_jax.generate.decode import Decoded, Prompts, decode
from bagpiper_jax.generate.output import Segment, audio_codes, split_segments, text_tokens
from bagpiper_jax.generate.prompts import PromptError, PromptRows, prompt_rows, templated_prompt
from bagpiper_jax.generate.rules import DecodeRules, modality_plan
from bagpiper_jax.sharding import batch_shards, logical_to_spec, make_mesh
from bagpiper_jax.vocab import Vocab

CACHE_ROUND = 64  # cache slots are rounded up to this (fewer compiled shapes)


@dataclasses.dataclass
class Answer:
    """One generated answer: ``parts`` are ``("text", str)`` / ``("audio", float32 wav)``
    in order; ``finished`` is False when the cache filled before the answer ended."""

    parts: list[tuple[str, str | np.ndarray]]
    finished: bool
    frames: int

    def texts(self) -> list[str]:
        return [p for kind, p in self.parts if kind == "text"]

    def audios(self) -> list[np.ndarray]:
        return [p for kind, p in self.parts if kind == "audio"]


@dataclasses.dataclass
class Generation:
    """``answers[prompt][sample]`` plus timing: frames decoded over all answers, seconds of
    the jitted decode (compile excluded; ``compile_s`` separate)."""

    answers: list[list[Answer]]
    frames: int
    decode_s: float
    compile_s: float

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.decode_s if self.decode_s > 0 else math.inf


def _resolve_module_dirs(cfg: Config, checkpoint: Path) -> Config:
    """Fills ``assets.codec`` / ``assets.audio_encoder`` from a model checkpoint's own
    copies when the config leaves them empty."""
    assets = cfg.assets
    if is_model_checkpoint(checkpoint):
        if not assets.codec and (checkpoint / "codec").is_dir():
            assets = dataclasses.replace(assets, codec=str(checkpoint / "codec"))
        if not assets.audio_encoder and (checkpoint / "audio_encoder").is_dir():
            assets = dataclasses.replace(assets, audio_encoder=str(checkpoint / "audio_encoder"))
    return dataclasses.replace(cfg, assets=assets)


class Generator:
    """Holds the model params, tokenizer, codec and audio tower for generation.

    Build it with :meth:`from_checkpoint`; :meth:`generate` is the general entry point,
    :meth:`caption`, :meth:`answer` and :meth:`generate_audio` the caption-then-process
    shortcuts.
    """

    def __init__(self, cfg: Config, graphdef: nnx.GraphDef, params: nnx.State, mesh: Mesh):
        self.cfg, self.mesh = cfg, mesh
        self.vocab = Vocab.from_config(cfg.model)
        self.graphdef, self.params = graphdef, params
        self.preparer = Preparer(cfg)  # tokenizer, codec, log-mel: exactly as in training data
        self.tower = load_frozen_tower(cfg, mesh)  # as the train step holds it
        self._encode = None if self.tower is None else jax.jit(self.tower.encode)
        self._compiled = {}  # decode programs by (rules, slots, guidance, prompt shapes)
        self.row_multiple = batch_shards(mesh, cfg.mesh.rules)
        self.batch_sharding = NamedSharding(mesh, logical_to_spec(("activation_batch",), cfg.mesh.rules))

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, cfg: Config, mesh: Mesh | None = None) -> Generator:
        """Params from ``checkpoint`` (model checkpoint, run directory or run step) on ``mesh``
        (default: ``cfg.mesh`` over all devices)."""
        checkpoint = Path(checkpoint).absolute()
        cfg = _resolve_module_dirs(cfg, checkpoint)
        mesh = make_mesh(cfg.mesh) if mesh is None else mesh
        graphdef, params = ParamsSource(checkpoint).restore(cfg, mesh)  # params only, never optimizer state
        return cls(cfg, graphdef, params, mesh)

    def generate(
        self,
        prompts: Sequence[Sequence[tuple[str, str, str]]],
        enforce_modality: Sequence[str | None] = (),
        samples: int | None = None,
        seed: int | None = None,
        guidance: bool | None = None,
        settings: GenerateConfig | None = None,
    ) -> Generation:
        """Answers every prompt ``samples`` times (default ``generate.samples``).

        Args:
          prompts: each a list of ``(role, modality, content)`` user/system messages (audio
            content: a file path).
          enforce_modality: the modalities of the answer's first segments, e.g.
            ``("text", "audio")`` (the reference's ``enforce_modality``); a ``None`` entry lets
            the model choose that one. Past the list the model chooses, and decides whether
            to go on (docs/generation.md).
          seed: PRNG seed (default ``generate.seed``).
          guidance: classifier-free guidance rows (default: when a segment the rules allow
            has a guidance scale above 1).
          settings: decoding settings for this call (default ``cfg.generate``): per-modality
            temperature, top-k, guidance scale and min/max steps, and the rule switches.
        """
        settings = self.cfg.generate if settings is None else settings
        samples = settings.samples if samples is None else samples
        if samples <= 0:
            raise ValueError(f"samples must be positive, got {samples}")
        rules = DecodeRules(self.vocab, settings, modality_plan(enforce_modality))
        guidance = rules.may_guide if guidance is None else guidance
        templated = [
            templated_prompt(self.preparer, p, mel_bins(self.tower), f"prompt {i}") for i, p in enumerate(prompts)
        ]
        if not templated:
            raise PromptError("no prompts given")
        rows = prompt_rows(templated, samples, self.row_multiple)
        prompt_frames, max_frames = rows.ids.shape[1], self.cfg.runtime.max_frames
        if prompt_frames >= max_frames:
            raise PromptError(f"the prompt has {prompt_frames} frames, runtime.max_frames is {max_frames}")
        slots = min(max_frames, -(-(prompt_frames + settings.max_new_frames) // CACHE_ROUND) * CACHE_ROUND)
        model_prompts = self._model_prompts(rows)
        key = jax.random.key(settings.seed if seed is None else seed)
        signature = (
            rules,
            slots,
            guidance,
            jax.tree.structure(model_prompts),
            tuple((x.shape, x.dtype) for x in jax.tree.leaves(model_prompts)),
        )
        with jax.set_mesh(self.mesh):
            t0 = time.perf_counter()
            if signature not in self._compiled:  # compile once per shape; timed apart from decoding
                self._compiled[signature] = decode.lower(
                    self.graphdef, self.params, model_prompts, key, rules=rules, slots=slots, guidance=guidance
                ).compile()
            compiled = self._compiled[signature]
            t1 = time.perf_counter()
            out = jax.block_until_ready(compiled(self.params, model_prompts, key))
            t2 = time.perf_counter()
        answers = self._answers(out, rows, len(templated), samples)
        frames = sum(a.frames for per_prompt in answers for a in per_prompt)
        return Generation(answers, frames, t2 - t1, t1 - t0)

    def _model_prompts(self, rows: PromptRows) -> Prompts:
        def put(tree):
            return jax.tree.map(lambda x: jax.device_put(jnp.asarray(x), self.batch_sharding), tree)

        continuous = None
        if rows.pieces.lengths.any():
            if self.tower is None:
                raise PromptError("the prompt holds audio but assets.audio_encoder is not set")
            with jax.set_mesh(self.mesh):
                continuous = self._encode(self.tower.params, put(rows.pieces))
        return Prompts(put(rows.ids), put(rows.first), continuous)

    def _answers(self, out: Decoded, rows: PromptRows, prompts: int, samples: int) -> list[list[Answer]]:
        frames, end, finished = (np.asarray(x) for x in (out.frames, out.end, out.finished))
        start = rows.ids.shape[1]
        segments = {
            r: split_segments(frames[r], start, int(end[r]), bool(finished[r]))
            for r in range(len(rows.prompt))
            if rows.prompt[r] >= 0
        }
        audio = [
            (r, i, audio_codes(s, self.vocab))
            for r, segs in segments.items()
            for i, s in enumerate(segs)
            if s.modality == "audio"
        ]
        nonempty = [(r, i, c) for r, i, c in audio if len(c)]
        wavs = dict(zip([(r, i) for r, i, _ in nonempty], self.preparer.codec.decode([c for _, _, c in nonempty])))
        answers: list[list[Answer]] = [[] for _ in range(prompts)]
        for r, segs in segments.items():
            parts = [self._part(s, wavs.get((r, i))) for i, s in enumerate(segs)]
            answers[rows.prompt[r]].append(Answer(parts, bool(finished[r]), int(end[r]) - start))
        return answers

    def _part(self, segment: Segment, wav: np.ndarray | None) -> tuple[str, str | np.ndarray]:
        if segment.modality == "text":
            return "text", self.preparer.tokenizer.decode(text_tokens(segment, self.vocab))
        return "audio", np.zeros((0,), np.float32) if wav is None else wav

    def caption(self, audio: str | Path) -> str:
        """The rich caption of an audio file."""
        return self._first(self.generate([[("user", "audio", str(audio))]], ("text",), samples=1)).texts()[0]

    def answer(self, audio: str | Path, question: str) -> tuple[str, str]:
        """Caption-then-answer: ``(rich caption, answer)`` for a question about an audio file."""
        texts = self._first(
            self.generate([[("user", "audio", str(audio)), ("user", "text", question)]], ("text", "text"), samples=1)
        ).texts()
        return texts[0], texts[1] if len(texts) > 1 else ""

    def generate_audio(self, description: str, caption_first: bool = True) -> tuple[str | None, np.ndarray]:
        """Audio for a description: ``(rich caption or None, 16 kHz float32 waveform)``;
        with ``caption_first`` the model writes the rich caption before the audio."""
        plan = ("text", "audio") if caption_first else ("audio",)
        answer = self._first(self.generate([[("user", "text", description)]], plan, samples=1))
        audios = answer.audios()
        return (answer.texts()[0] if caption_first else None), audios[0] if audios else np.zeros((0,), np.float32)

    @staticmethod
    def _first(generation: Generation) -> Answer:
        return generation.answers[0][0]
