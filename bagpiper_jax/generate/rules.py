"""What the next frame of each row may hold, and how a decided frame moves the row on.

A row's answer is a sequence of assistant segments ``<|assistant|> <|modality|> content
END``; a segment ending in ``<|eot|>`` is followed by another, ``<|eos|>`` ends the
answer. Each row carries a small state (all ``[rows]`` int32 arrays):

- ``phase``: what the next frame is — MODALITY, TEXT, AUDIO (content or END), ROLE (the
  forced ``<|assistant|>`` after ``<|eot|>``) or DONE;
- ``segment``: index of the current segment;
- ``step``: content frames decided in the current segment;
- ``audio_end``: in an audio segment, the step at which stream 0 emitted its audio pad
  (the codec frame count ``T``; ``NOT_ENDED`` before).

Allowed ids (DESIGN §9): MODALITY: the modality tokens, or the one the caller's plan
forces. TEXT: stream 0 text ids, plus the END tokens from ``min_text_frames`` on (only END
tokens at ``max_text_frames``); other streams pad (id 0). AUDIO, delay-interleaved: at
step ``i`` stream ``n`` holds its own audio pad while ``i < n`` or ``i >= T + n``, else one
of its own codes; stream 0 may emit its pad (ending the codes, ``T = i``) from
``min_audio_frames`` on and must at ``max_audio_frames``; the frame at ``i = T + S - 1``
is the END frame (stream 0 an END token, others 0). END tokens: ``<|eot|>`` only while
more segments may follow, ``<|eos|>`` only where the plan ends (free choice without a
plan, ``<|eos|>`` forced in segment ``max_segments - 1``).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from bagpiper_jax.config import GenerateConfig
from bagpiper_jax.vocab import ASSISTANT, AUDIO, EOS, EOT, MODALITY_IDS, PAD, TEXT, Vocab

MODALITY, TEXT_PHASE, AUDIO_PHASE, ROLE, DONE = range(5)
NOT_ENDED = 2**30
FREE = -1  # plan entry: the model chooses the modality


def modality_plan(modalities) -> tuple[int, ...]:
    """``("text", "audio", None, ...)`` -> modality token ids per segment (``FREE`` = choose)."""
    plan = []
    for m in modalities:
        if m is not None and m not in MODALITY_IDS:
            raise ValueError(f"segment modality must be one of {sorted(MODALITY_IDS)} or None, got {m!r}")
        plan.append(FREE if m is None else MODALITY_IDS[m])
    return tuple(plan)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class RowState:
    phase: jax.Array
    segment: jax.Array
    step: jax.Array
    audio_end: jax.Array

    @classmethod
    def start(cls, rows: int) -> "RowState":
        """Rows whose last prompt frame is ``<|assistant|>``: the modality comes next."""
        zeros = jnp.zeros((rows,), jnp.int32)
        return cls(zeros + MODALITY, zeros, zeros, zeros + NOT_ENDED)


@dataclasses.dataclass(frozen=True)
class Rules:
    """Static decoding rules: vocabulary, limits and the modality plan."""

    vocab: Vocab
    cfg: GenerateConfig
    plan: tuple[int, ...] = ()

    @property
    def segments(self) -> int:
        return len(self.plan) if self.plan else self.cfg.max_segments

    def planned(self, segment: jax.Array) -> jax.Array:
        """Modality id forced for ``segment`` (``FREE`` past the plan or without one)."""
        if not self.plan:
            return jnp.full(segment.shape, FREE, jnp.int32)
        table = jnp.asarray(self.plan, jnp.int32)
        return jnp.where(segment < len(self.plan), table[jnp.minimum(segment, len(self.plan) - 1)], FREE)

    def stream0_allowed(self, s: RowState) -> jax.Array:
        """``[rows, vocab]`` bool: ids stream 0 may take next."""
        v, cfg = self.vocab, self.cfg
        ids = jnp.arange(v.size)[None, :]
        col = lambda x: x[:, None]  # noqa: E731
        more = col(s.segment < self.segments - 1)
        ends = ((ids == EOT) & more) | ((ids == EOS) & ~more)
        planned = col(self.planned(s.segment))
        modality = jnp.where(planned == FREE, (ids == TEXT) | (ids == AUDIO), ids == planned)
        text = (((ids >= v.text_offset) & (ids < v.audio_offset) & col(s.step < cfg.max_text_frames))
                | (ends & col(s.step >= min(cfg.min_text_frames, cfg.max_text_frames))))
        pad0, (_, end0) = v.audio_pad(0), v.stream_range(0)
        i, e = col(s.step), col(s.audio_end)
        codes = (ids > pad0) & (ids < end0) & (i < cfg.max_audio_frames)
        pad = (ids == pad0) & (i >= min(cfg.min_audio_frames, cfg.max_audio_frames))
        audio = jnp.where(i == e + v.num_streams - 1, ends, jnp.where(i >= e, ids == pad0, codes | pad))
        phase = col(s.phase)
        return jnp.select([phase == MODALITY, phase == TEXT_PHASE, phase == AUDIO_PHASE, phase == ROLE],
                          [modality, text, audio, ids == ASSISTANT], ids == PAD)

    def rest_allowed(self, s: RowState) -> tuple[jax.Array, jax.Array]:
        """Streams 1..S-1: ``(allowed [rows, S-1, stream_block], zero [rows])``. ``allowed``
        indexes each stream's own block (0 = its audio pad, ``1 + c`` = code ``c``);
        where ``zero`` the streams hold id 0 (every frame but audio content)."""
        v = self.vocab
        n = jnp.arange(1, v.num_streams)[None, :, None]
        j = jnp.arange(v.stream_block)[None, None, :]
        i, e = s.step[:, None, None], s.audio_end[:, None, None]
        in_codes = (i >= n) & (i < e + n)
        allowed = jnp.where(in_codes, j > 0, j == 0)
        content = (s.phase == AUDIO_PHASE) & (s.step < s.audio_end + v.num_streams - 1)
        return allowed, ~content

    def advance(self, s: RowState, stream0: jax.Array) -> RowState:
        """The state after each row's next frame has stream-0 id ``stream0 [rows]``."""
        v = self.vocab
        is_end = (stream0 == EOS) | (stream0 == EOT)
        ending = ((s.phase == TEXT_PHASE) | (s.phase == AUDIO_PHASE)) & is_end
        after_end = jnp.where(stream0 == EOT, ROLE, DONE)
        phase = jnp.select(
            [s.phase == MODALITY, ending, s.phase == ROLE],
            [jnp.where(stream0 == AUDIO, AUDIO_PHASE, TEXT_PHASE), after_end, MODALITY], s.phase)
        ends_codes = (s.phase == AUDIO_PHASE) & (stream0 == v.audio_pad(0)) & (s.audio_end == NOT_ENDED)
        fresh = (s.phase == MODALITY) | ending
        return RowState(phase=phase,
                        segment=s.segment + (ending & (stream0 == EOT)),
                        step=jnp.where(fresh, 0, s.step + 1),
                        audio_end=jnp.where(fresh, NOT_ENDED, jnp.where(ends_codes, s.step, s.audio_end)))

    def uncond_keeps(self, s: RowState, stream0: jax.Array) -> jax.Array:
        """``[rows]`` bool: whether the CFG unconditional row sees the decided frame (the
        frames of audio segments: role, modality, content, END) rather than a pad frame.
        A role frame is kept unless the plan says the coming segment is text (whether a
        freely chosen segment is audio is only known one frame later)."""
        return (((s.phase == MODALITY) & (stream0 == AUDIO)) | (s.phase == AUDIO_PHASE)
                | ((s.phase == ROLE) & (self.planned(s.segment) != TEXT)))
