"""Prompts -> left-padded model rows (host side, numpy).

A prompt is a list of messages ``(role, modality, content)`` (user/system turns; audio
content is a file path), prepared like training data (:class:`~bagpiper_jax.data.preparer.
Preparer`: tokenizer, 16 kHz log-mel) and templated (:func:`~bagpiper_jax.data.template.
template`): ``<|bos|>``, the messages, then the ``<|assistant|>`` frame the answer starts
from. Rows are left-padded to the longest prompt so every row decodes at the same cache
slot; their continuous-audio pieces travel as in training batches
(:class:`~bagpiper_jax.audio_encoder.pieces.MelPieces`), each piece's first token frame
shifted by the row's padding.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from bagpiper_jax.audio_encoder.pieces import MelPieces
from bagpiper_jax.data.manifest import Example, Message
from bagpiper_jax.data.preparer import Preparer
from bagpiper_jax.data.template import template
from bagpiper_jax.errors import BagpiperError
from bagpiper_jax.vocab import ASSISTANT


class PromptError(BagpiperError):
    """A prompt cannot be turned into model input; the message says which and why."""


@dataclasses.dataclass
class PromptRows:
    """ids int32 ``[rows, frames, streams]``; first int32 ``[rows]``; pieces: the rows'
    log-mel pieces (numpy, ``pieces`` slots may be 0); ``prompt`` int ``[rows]``: the
    prompt each row answers (-1 for filler rows that only round the batch up)."""

    ids: np.ndarray
    first: np.ndarray
    pieces: MelPieces
    prompt: np.ndarray


def templated_prompt(preparer: Preparer, messages, mel_bins: int, name: str = "prompt") -> dict:
    """One prompt's frames (ending in ``<|assistant|>``) and log-mel pieces (template format)."""
    if not messages:
        raise PromptError(f"{name} has no messages")
    for role, modality, content in messages:
        if role == "assistant":
            raise PromptError(f"{name}: prompts hold user/system messages; the answer is generated")
        if modality == "text" and not str(content).strip():
            raise PromptError(f"{name}: a text message is blank")
    example = Example(name, "dialogue", tuple(Message(*m) for m in messages))
    prepared, skipped = preparer.prepare([example])
    if skipped:
        raise PromptError(f"{name}: {skipped[0][2]}")
    data = preparer.cfg.data
    out = template(
        prepared[0],
        preparer.vocab,
        preparer.tokens_for,
        piece_frames=data.piece_frames,
        mel_bins=mel_bins,
        text_token0_as_pad=data.text_token0_as_pad,
    )
    role = np.zeros((1, out["ids"].shape[1]), np.int32)
    role[0, 0] = ASSISTANT
    out["ids"] = np.concatenate([out["ids"], role])
    return out


def prompt_rows(prompts: list[dict], samples: int, row_multiple: int = 1) -> PromptRows:
    """Each templated prompt repeated ``samples`` times, left-padded, then filler rows (copies
    of the first) up to a multiple of ``row_multiple`` (the mesh's batch shards)."""
    order = [p for p in range(len(prompts)) for _ in range(samples)]
    rows = -(-len(order) // row_multiple) * row_multiple
    order += [-1] * (rows - len(order))
    frames = max(len(p["ids"]) for p in prompts)
    mel_frames = max(len(p["mel"]) for p in prompts)
    slots = max(len(p["mel_lengths"]) for p in prompts)
    streams, mel_bins = prompts[0]["ids"].shape[1], prompts[0]["mel"].shape[1]

    def per_piece(fill=0):
        return np.full((rows, slots), fill, np.int32)

    pieces = MelPieces(
        np.zeros((rows, mel_frames, mel_bins), np.float32), per_piece(), per_piece(), per_piece(), per_piece(-1)
    )
    out = PromptRows(
        np.zeros((rows, frames, streams), np.int32), np.zeros((rows,), np.int32), pieces, np.asarray(order, np.int32)
    )
    for r, p in enumerate(order):
        src = prompts[max(p, 0)]
        first = frames - len(src["ids"])
        out.ids[r, first:] = src["ids"]
        out.first[r] = first
        n = len(src["mel_lengths"])
        pieces.mel[r, : len(src["mel"])] = src["mel"]
        pieces.offset[r, :n] = src["mel_offset"]
        pieces.lengths[r, :n] = src["mel_lengths"]
        pieces.clip_lengths[r, :n] = src["mel_clip_lengths"]
        pieces.start[r, :n] = src["mel_start"] + first
    return out
