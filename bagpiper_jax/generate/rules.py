"""What the next frame of each row may hold, and how a decided frame moves the row on
(docs/generation.md, Decoding rules).

A row's answer is a sequence of assistant segments ``<|assistant|> <|modality|> content
END``. Each row carries a small state (all ``[rows]`` int32 arrays):

- ``phase``: what the next frame is — MODALITY, TEXT, AUDIO (content or END), ROLE (the
  forced ``<|assistant|>`` before another segment) or DONE;
- ``segment``: index of the current segment;
- ``step``: frames decided in the current segment after its modality token;
- ``audio_end``: in an audio segment, the step at which stream 0 first emitted its audio
  pad (the codec frame count ``T`` under the strict delay pattern; ``NOT_ENDED`` before).

The reference's rules (ESPnet SpeechLM ``lm/parallel.py``; the defaults):

- MODALITY: the modality the enforce list (the caller's plan) gives for this segment;
  past its end, or at a ``FREE`` entry, the argmax of ``<|text|>`` / ``<|audio|>``.
- TEXT: stream 0 text ids; other streams id 0. AUDIO: stream ``n`` any id of its own
  1025-id block, its pad included, at every step (no delay pattern is forced).
- END tokens: ``<|eos|>`` and ``<|eot|>`` on stream 0 from step ``min_step`` on, in every
  segment. Decided at step ``max_step - 1``, a content frame cuts the segment (no END).
- After ``<|eot|>`` another segment follows; after ``<|eos|>`` or a cut, one follows only
  while the enforce list has entries left. An answer holds at most
  ``max(generate.max_segments, len(plan))`` segments.

Stricter rules (``GenerateConfig`` switches):

- ``strict_delay_pattern``: at audio step ``i`` stream ``n`` holds its pad while ``i < n``
  or ``i >= T + n``, else one of its codes; stream 0's pad ends the codes (``T = i``) once
  the END frame, at ``i = T + S - 1``, would not come before ``min_step``.
- ``planned_end_tokens``: ``<|eot|>`` only where another segment follows (by the plan;
  without one, in segments before ``max_segments - 1``), ``<|eos|>`` only where the answer
  ends (with a plan, its last segment; without one, anywhere).
- ``end_at_max_step``: at step ``max_step - 1`` only END tokens (with the strict pattern,
  stream 0's pad is forced ``S - 1`` steps earlier so that the END frame lands there).
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

    @property
    def in_content(self) -> jax.Array:
        """``[rows]`` bool: the row is inside a segment (its next frame is content or END)."""
        return (self.phase == TEXT_PHASE) | (self.phase == AUDIO_PHASE)


def _is_end(stream0: jax.Array) -> jax.Array:
    return (stream0 == EOS) | (stream0 == EOT)


@dataclasses.dataclass(frozen=True)
class DecodeRules:
    """Static decoding rules: vocabulary, settings and the enforced modalities (hashable: a
    static argument of the jitted decode)."""

    vocab: Vocab
    settings: GenerateConfig
    plan: tuple[int, ...] = ()

    @property
    def max_segments(self) -> int:
        return max(self.settings.max_segments, len(self.plan))

    @property
    def max_top_k(self) -> int:
        """Static bound of the per-row top-k (0: no top-k cut anywhere)."""
        return max(self.settings.text.top_k, self.settings.audio.top_k)

    @property
    def may_guide(self) -> bool:
        """Whether a segment this plan allows decodes with a guidance scale above 1 (only then
        do unconditional rows pay off)."""
        s = self.settings
        closed = s.planned_end_tokens and self.plan and FREE not in self.plan  # exactly the planned segments
        kinds = set(self.plan) if closed else {TEXT, AUDIO}
        return (TEXT in kinds and s.text.guidance_scale > 1) or (AUDIO in kinds and s.audio.guidance_scale > 1)

    def planned(self, segment: jax.Array) -> jax.Array:
        """Modality id forced for ``segment`` (``FREE`` past the plan or without one)."""
        if not self.plan:
            return jnp.full(segment.shape, FREE, jnp.int32)
        table = jnp.asarray(self.plan, jnp.int32)
        return jnp.where(segment < len(self.plan), table[jnp.minimum(segment, len(self.plan) - 1)], FREE)

    def _setting(self, phase: jax.Array, name: str) -> jax.Array:
        """``[rows]``: a setting of the row's segment modality (the text one outside audio)."""
        return jnp.where(phase == AUDIO_PHASE, getattr(self.settings.audio, name), getattr(self.settings.text, name))

    def sampling(self, state: RowState) -> tuple[jax.Array, jax.Array]:
        """Per-row ``(temperature, top_k)``; the modality choice and forced frames are greedy."""
        content = state.in_content
        return (
            jnp.where(content, self._setting(state.phase, "temperature"), 0.0),
            jnp.where(content, self._setting(state.phase, "top_k"), 0),
        )

    def guidance(self, state: RowState) -> tuple[jax.Array, jax.Array]:
        """Per-row ``(guided, scale)``: whether the next frame's logits combine with the
        unconditional row's (inside a segment whose scale is above 1), and the scale."""
        scale = self._setting(state.phase, "guidance_scale")
        return state.in_content & (scale > 1), scale

    def starts_guided_segment(self, state: RowState) -> jax.Array:
        """``[rows]`` bool: the frame fed now is the modality token of a guided segment."""
        return self.guidance(state)[0] & (state.step == 0)

    def end_tokens(self, segment: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Per-row ``(eot, eos)``: which END tokens the segment may end with."""
        anywhere = jnp.ones(segment.shape, bool)
        if not self.settings.planned_end_tokens:
            return anywhere, anywhere
        follows = segment < (len(self.plan) if self.plan else self.max_segments) - 1
        return follows, ~follows if self.plan else anywhere

    def stream0_allowed(self, state: RowState) -> jax.Array:
        """``[rows, vocab]`` bool: ids stream 0 may take next."""
        vocab = self.vocab
        ids = jnp.arange(vocab.size)[None, :]

        def per_row(x):  # [rows] -> [rows, 1], against ids [1, vocab]
            return x[:, None]

        eot, eos = self.end_tokens(state.segment)
        ends = ((ids == EOT) & per_row(eot)) | ((ids == EOS) & per_row(eos))
        planned = per_row(self.planned(state.segment))
        modality = jnp.where(planned == FREE, (ids == TEXT) | (ids == AUDIO), ids == planned)
        step = per_row(state.step)
        may_end = step >= per_row(self._setting(state.phase, "min_step"))
        at_max = step >= per_row(self._setting(state.phase, "max_step")) - 1
        must_end = at_max & self.settings.end_at_max_step
        is_text = (ids >= vocab.text_offset) & (ids < vocab.audio_offset)
        text = jnp.where(must_end, ends, is_text | (ends & may_end))
        pad0, (_, end0) = vocab.audio_pad(0), vocab.stream_range(0)
        if self.settings.strict_delay_pattern:
            audio = self._strict_stream0(state, ids, ends)
        else:
            audio = jnp.where(must_end, ends, ((ids >= pad0) & (ids < end0)) | (ends & may_end))
        phase = per_row(state.phase)
        return jnp.select(
            [phase == MODALITY, phase == TEXT_PHASE, phase == AUDIO_PHASE, phase == ROLE],
            [modality, text, audio, ids == ASSISTANT],
            ids == PAD,
        )

    def _strict_stream0(self, state: RowState, ids: jax.Array, ends: jax.Array) -> jax.Array:
        """Stream 0 of an audio segment under the delay pattern: codes, then its pad (which
        ends the codes), then the END frame ``S - 1`` steps after it."""
        vocab, audio, streams = self.vocab, self.settings.audio, self.vocab.num_streams
        pad0, (_, end0) = vocab.audio_pad(0), vocab.stream_range(0)
        step, audio_end = state.step[:, None], state.audio_end[:, None]
        may_stop = step >= audio.min_step - (streams - 1)  # the END frame then comes at min_step or later
        must_stop = (step >= audio.max_step - streams) & self.settings.end_at_max_step  # END at max_step - 1
        codes = jnp.where(must_stop, ids == pad0, ((ids > pad0) & (ids < end0)) | ((ids == pad0) & may_stop))
        return jnp.where(step == audio_end + streams - 1, ends, jnp.where(step >= audio_end, ids == pad0, codes))

    def rest_allowed(self, state: RowState) -> jax.Array:
        """Streams 1..S-1: ``[rows, S-1, stream_block]`` bool over each stream's own block
        (0 = its audio pad, ``1 + c`` = code ``c``); only read in audio segments."""
        streams, block = self.vocab.num_streams, self.vocab.stream_block
        rows = state.step.shape[0]
        if not self.settings.strict_delay_pattern:
            return jnp.ones((rows, streams - 1, block), bool)
        stream = jnp.arange(1, streams)[None, :, None]
        block_id = jnp.arange(block)[None, None, :]
        step, audio_end = state.step[:, None, None], state.audio_end[:, None, None]
        in_codes = (step >= stream) & (step < audio_end + stream)  # stream n is delayed by n frames
        return jnp.where(in_codes, block_id > 0, block_id == 0)

    def assemble(self, state: RowState, stream0: jax.Array, blocks: jax.Array) -> jax.Array:
        """The decided frames ``[rows, S]``: stream 0, then streams 1..S-1 from their sampled
        block indices ``blocks [rows, S-1]`` in audio content frames, id 0 elsewhere (the END
        frame included); all id 0 for rows that are done."""
        content = (state.phase == AUDIO_PHASE) & ~_is_end(stream0)
        rest = jnp.where(content[:, None], blocks + jnp.asarray(self.vocab.audio_pads[1:]), 0)
        frame = jnp.concatenate([stream0[:, None], rest], axis=1)
        return jnp.where((state.phase != DONE)[:, None], frame, 0)

    def cut(self, state: RowState, stream0: jax.Array) -> jax.Array:
        """``[rows]`` bool: the decided frame is a content frame at step ``max_step - 1``, which
        ends its segment without an END token."""
        return state.in_content & ~_is_end(stream0) & (state.step >= self._setting(state.phase, "max_step") - 1)

    def advance(self, state: RowState, stream0: jax.Array) -> RowState:
        """The state after each row's next frame has stream-0 id ``stream0 [rows]``."""
        ending = state.in_content & _is_end(stream0)
        closes = ending | self.cut(state, stream0)
        following = state.segment + 1
        continues = (following < self.max_segments) & ((ending & (stream0 == EOT)) | (following < len(self.plan)))
        phase = jnp.select(
            [state.phase == MODALITY, closes & continues, closes, state.phase == ROLE],
            [jnp.where(stream0 == AUDIO, AUDIO_PHASE, TEXT_PHASE), ROLE, DONE, MODALITY],
            state.phase,
        )
        ends_codes = (
            (state.phase == AUDIO_PHASE) & (stream0 == self.vocab.audio_pad(0)) & (state.audio_end == NOT_ENDED)
        )
        fresh = (state.phase == MODALITY) | closes
        return RowState(
            phase=phase,
            segment=state.segment + closes,
            step=jnp.where(fresh, 0, state.step + 1),
            audio_end=jnp.where(fresh, NOT_ENDED, jnp.where(ends_codes, state.step, state.audio_end)),
        )

    def unconditional_start(self, rows: int) -> jax.Array:
        """``[rows]`` stream-0 id of the unconditional rows where the prompt holds its last
        frame, ``<|assistant|>``: the pad for the reference's row; the previous row keeps
        ``<|assistant|>`` unless the plan makes the first segment text."""
        if self.settings.unconditional_row == "reference":
            return jnp.full((rows,), PAD, jnp.int32)
        return jnp.where(self.planned(jnp.zeros((rows,), jnp.int32)) == TEXT, PAD, ASSISTANT)

    def unconditional_sees(self, state: RowState, stream0: jax.Array) -> jax.Array:
        """``[rows]`` bool: whether the unconditional row is fed the decided frame (else a pad
        frame). The reference's row: the modality token and the frames of guided segments
        (decode rebuilds its history as all pad when a later guided segment starts). The
        ``audio_segments`` row: the frames of every audio segment (role, modality, content,
        END); a role frame is kept unless the plan says the coming segment is text."""
        if self.settings.unconditional_row == "reference":
            audio, text = self.settings.audio, self.settings.text
            modality_scale = jnp.where(stream0 == AUDIO, audio.guidance_scale, text.guidance_scale)
            return ((state.phase == MODALITY) & (modality_scale > 1)) | self.guidance(state)[0]
        return (
            ((state.phase == MODALITY) & (stream0 == AUDIO))
            | (state.phase == AUDIO_PHASE)
            | ((state.phase == ROLE) & (self.planned(state.segment) != TEXT))
        )
