"""Decoded frames -> answer segments -> text and 16 kHz audio (host side).

An answer is ``<|modality|> content END`` segments, consecutive ones joined by
``<|eot|> <|assistant|>``. Text content is stream 0's text ids; audio content is a
delay-interleaved block that :func:`audio_codes` turns back into codec codes (only the
codec frames whose eight streams were all generated, when the cache filled mid-block).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from bagpiper_jax.codec.interleave import delay_deinterleave, ids_to_codes
from bagpiper_jax.vocab import AUDIO, EOS, EOT, TEXT, Vocab


@dataclasses.dataclass
class Segment:
    """modality: "text" | "audio"; ids: content frames ``[n, streams]``; end: "eot" | "eos" |
    "" (cut off by the cache limit)."""

    modality: str
    ids: np.ndarray
    end: str


def split_segments(frames: np.ndarray, start: int, end: int) -> list[Segment]:
    """The segments of one row's answer: ``frames [slots, streams]`` with the first modality
    frame at ``start`` and ``end`` slots used."""
    segments, pos = [], start
    while pos < end:
        modality = {TEXT: "text", AUDIO: "audio"}.get(int(frames[pos, 0]))
        if modality is None:
            raise ValueError(f"frame {pos} holds {int(frames[pos, 0])} where a modality token was expected")
        content = frames[pos + 1 : end]
        stops = np.flatnonzero((content[:, 0] == EOS) | (content[:, 0] == EOT))
        if not len(stops):
            segments.append(Segment(modality, content, ""))
            break
        stop = int(stops[0])
        segments.append(Segment(modality, content[:stop], "eos" if content[stop, 0] == EOS else "eot"))
        pos += stop + 3  # content, END, <|assistant|>
    return segments


def text_tokens(segment: Segment, vocab: Vocab) -> np.ndarray:
    """Text tokenizer ids of a text segment."""
    return segment.ids[:, 0] - vocab.text_offset


def audio_codes(segment: Segment, vocab: Vocab) -> np.ndarray:
    """Codec codes ``[frames, streams]`` of an audio segment (complete codec frames only)."""
    ids, streams = segment.ids, vocab.num_streams
    pad_rows = np.flatnonzero(ids[:, 0] == vocab.audio_pad(0))
    codes = pad_rows[0] if len(pad_rows) else len(ids)  # stream 0's pad ends its codes
    frames = min(codes, len(ids) - streams + 1)
    if frames <= 0:
        return np.zeros((0, streams), np.int32)
    return ids_to_codes(delay_deinterleave(ids[: frames + streams - 1]), vocab)
