"""Decoded frames -> answer segments -> text and 16 kHz audio (host side).

An answer is ``<|modality|> content [END]`` segments; consecutive ones are joined by an
``<|assistant|>`` frame (after ``<|eot|>`` or ``<|eos|>``, or right after the content of
a segment cut at its ``max_step``). Text content is stream 0's text ids; audio content is
a delay-interleaved block that :func:`audio_codes` turns back into codec codes by the
reference's rule.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from bagpiper_jax.codec.interleave import delay_deinterleave
from bagpiper_jax.vocab import ASSISTANT, AUDIO, EOS, EOT, TEXT, Vocab


@dataclasses.dataclass
class Segment:
    """modality: "text" | "audio"; ids: content frames ``[n, streams]``; end: "eot" | "eos" |
    "max" (cut at its ``max_step``, no END token) | "" (cut off by the cache limit)."""

    modality: str
    ids: np.ndarray
    end: str


def split_segments(frames: np.ndarray, start: int, end: int, finished: bool = True) -> list[Segment]:
    """The segments of one row's answer: ``frames [slots, streams]`` with the first modality
    frame at ``start`` and ``end`` slots used; ``finished``: the row ended its answer (else
    the cache filled)."""
    segments, pos = [], start
    while pos < end:
        modality = {TEXT: "text", AUDIO: "audio"}.get(int(frames[pos, 0]))
        if modality is None:
            raise ValueError(f"frame {pos} holds {int(frames[pos, 0])} where a modality token was expected")
        content = frames[pos + 1 : end]
        # Content never holds specials: the first one is the END token or the next <|assistant|>.
        stops = np.flatnonzero(np.isin(content[:, 0], (EOS, EOT, ASSISTANT)))
        if not len(stops):
            segments.append(Segment(modality, content, "max" if finished else ""))
            break
        stop = int(stops[0])
        token = int(content[stop, 0])
        segments.append(Segment(modality, content[:stop], {EOS: "eos", EOT: "eot"}.get(token, "max")))
        pos += stop + (2 if token == ASSISTANT else 3)  # content, [END], <|assistant|>
    return segments


def text_tokens(segment: Segment, vocab: Vocab) -> np.ndarray:
    """Text tokenizer ids of a text segment."""
    return segment.ids[:, 0] - vocab.text_offset


def audio_codes(segment: Segment, vocab: Vocab) -> np.ndarray:
    """Codec codes ``[T, streams]`` of an audio segment by the reference's rule: of its ``n``
    content frames (END excluded), ``T = n - streams + 1``, stream ``k`` is read at
    ``ids[k : k + T, k]``, and its id minus its block start minus 1 is the code. An audio pad
    in that window (which the reference's rules allow) reads as code 0, as in the reference's
    vLLM fork. Strict-pattern blocks give back exactly their codes, also when cut off."""
    ids, streams = segment.ids, vocab.num_streams
    if len(ids) < streams:
        return np.zeros((0, streams), np.int32)
    codes = delay_deinterleave(ids) - (vocab.audio_pads + 1)
    return np.clip(codes, 0, vocab.codebook_size - 1).astype(np.int32)
