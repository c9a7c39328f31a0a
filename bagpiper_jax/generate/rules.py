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

Allowed ids (docs/generation.md): MODALITY: the modality tokens, or the one the caller's plan
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
    """Per-row decoding state (all int32 ``[rows]``; see the module docstring)."""

    phase: jax.Array
    segment: jax.Array
    step: jax.Array
    audio_end: jax.Array

    @classmethod
    def start(cls, rows: int) -> RowState:
        """Rows whose last prompt frame is ``<|assistant|>``: the modality comes next."""
        zeros = jnp.zeros((rows,), jnp.int32)
        return cls(zeros + MODALITY, zeros, zeros, zeros + NOT_ENDED)


@dataclasses.dataclass(frozen=True)
class DecodeRules:
    """Static decoding rules: vocabulary, limits and the modality plan (hashable: a static
    argument of the jitted decode)."""

    vocab: Vocab
    settings: GenerateConfig
    plan: tuple[int, ...] = ()

    @property
    def segments(self) -> int:
        return len(self.plan) if self.plan else self.settings.max_segments

    def planned(self, segment: jax.Array) -> jax.Array:
        """Modality id forced for ``segment`` (``FREE`` past the plan or without one)."""
        if not self.plan:
            return jnp.full(segment.shape, FREE, jnp.int32)
        table = jnp.asarray(self.plan, jnp.int32)
        return jnp.where(segment < len(self.plan), table[jnp.minimum(segment, len(self.plan) - 1)], FREE)

    def stream0_allowed(self, state: RowState) -> jax.Array:
        """``[rows, vocab]`` bool: ids stream 0 may take next."""
        vocab, limits = self.vocab, self.settings
        ids = jnp.arange(vocab.size)[None, :]

        def per_row(x):  # [rows] -> [rows, 1], against ids [1, vocab]
            return x[:, None]

        more_segments = per_row(state.segment < self.segments - 1)
        ends = ((ids == EOT) & more_segments) | ((ids == EOS) & ~more_segments)
        planned = per_row(self.planned(state.segment))
        modality = jnp.where(planned == FREE, (ids == TEXT) | (ids == AUDIO), ids == planned)
        step, audio_end = per_row(state.step), per_row(state.audio_end)
        is_text = (ids >= vocab.text_offset) & (ids < vocab.audio_offset)
        text = (is_text & (step < limits.max_text_frames)) | (
            ends & (step >= min(limits.min_text_frames, limits.max_text_frames))
        )
        pad0, (_, end0) = vocab.audio_pad(0), vocab.stream_range(0)
        codes = (ids > pad0) & (ids < end0) & (step < limits.max_audio_frames)
        may_end_codes = (ids == pad0) & (step >= min(limits.min_audio_frames, limits.max_audio_frames))
        audio = jnp.where(
            step == audio_end + vocab.num_streams - 1,
            ends,
            jnp.where(step >= audio_end, ids == pad0, codes | may_end_codes),
        )
        phase = per_row(state.phase)
        return jnp.select(
            [phase == MODALITY, phase == TEXT_PHASE, phase == AUDIO_PHASE, phase == ROLE],
            [modality, text, audio, ids == ASSISTANT],
            ids == PAD,
        )

    def rest_allowed(self, state: RowState) -> tuple[jax.Array, jax.Array]:
        """Streams 1..S-1: ``(allowed [rows, S-1, stream_block], zero [rows])``. ``allowed``
        indexes each stream's own block (0 = its audio pad, ``1 + c`` = code ``c``);
        where ``zero`` the streams hold id 0 (every frame but audio content)."""
        streams = self.vocab.num_streams
        stream = jnp.arange(1, streams)[None, :, None]
        block_id = jnp.arange(self.vocab.stream_block)[None, None, :]
        step, audio_end = state.step[:, None, None], state.audio_end[:, None, None]
        in_codes = (step >= stream) & (step < audio_end + stream)  # stream n is delayed by n frames
        allowed = jnp.where(in_codes, block_id > 0, block_id == 0)
        content = (state.phase == AUDIO_PHASE) & (state.step < state.audio_end + streams - 1)
        return allowed, ~content

    def advance(self, state: RowState, stream0: jax.Array) -> RowState:
        """The state after each row's next frame has stream-0 id ``stream0 [rows]``."""
        is_end = (stream0 == EOS) | (stream0 == EOT)
        ending = ((state.phase == TEXT_PHASE) | (state.phase == AUDIO_PHASE)) & is_end
        after_end = jnp.where(stream0 == EOT, ROLE, DONE)
        phase = jnp.select(
            [state.phase == MODALITY, ending, state.phase == ROLE],
            [jnp.where(stream0 == AUDIO, AUDIO_PHASE, TEXT_PHASE), after_end, MODALITY],
            state.phase,
        )
        ends_codes = (
            (state.phase == AUDIO_PHASE) & (stream0 == self.vocab.audio_pad(0)) & (state.audio_end == NOT_ENDED)
        )
        fresh = (state.phase == MODALITY) | ending
        return RowState(
            phase=phase,
            segment=state.segment + (ending & (stream0 == EOT)),
            step=jnp.where(fresh, 0, state.step + 1),
            audio_end=jnp.where(fresh, NOT_ENDED, jnp.where(ends_codes, state.step, state.audio_end)),
        )

    def unconditional_keeps(self, state: RowState, stream0: jax.Array) -> jax.Array:
        """``[rows]`` bool: whether the guidance row sees the decided frame (the frames of
        audio segments: role, modality, content, END) rather than a pad frame. A role frame
        is kept unless the plan says the coming segment is text (whether a freely chosen
        segment is audio is only known one frame later)."""
        return (
            ((state.phase == MODALITY) & (stream0 == AUDIO))
            | (state.phase == AUDIO_PHASE)
            | ((state.phase == ROLE) & (self.planned(state.segment) != TEXT))
        )
