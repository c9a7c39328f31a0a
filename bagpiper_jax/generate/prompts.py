"""Prompts -> left-padded model rows (host side, numpy).

A prompt is a list of messages ``(role, modality, content)`` (user/system turns; audio
content is a file path), prepared like training data (:class:`~bagpiper_jax.data.prepare.
Preparer`: tokenizer, 16 kHz log-mel) and templated (:func:`~bagpiper_jax.data.template.
template`): ``<|bos|>``, the messages, then the ``<|assistant|>`` frame the answer starts
from. Rows are left-padded to the longest prompt so every row decodes at the same cache
slot; continuous-audio pieces keep their frame index, shifted by the row's padding.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from bagpiper_jax.audio_encoder.config import output_lengths
from bagpiper_jax.data.manifest import Example, Message
from bagpiper_jax.data.prepare import Preparer
from bagpiper_jax.data.template import template
from bagpiper_jax.vocab import ASSISTANT


class PromptError(ValueError):
    """A prompt cannot be turned into model input; the message says which and why."""


@dataclasses.dataclass
class PromptRows:
    """ids int32 ``[rows, frames, streams]``; first int32 ``[rows]``; mel float32 ``[rows,
    pieces, piece_frames, mel_bins]`` with mel_lengths / mel_clip_lengths / mel_start int32
    ``[rows, pieces]`` (``pieces`` may be 0); ``prompt`` int ``[rows]``: the prompt each row
    answers (-1 for filler rows that only round the batch up)."""

    ids: np.ndarray
    first: np.ndarray
    mel: np.ndarray
    mel_lengths: np.ndarray
    mel_clip_lengths: np.ndarray
    mel_start: np.ndarray
    prompt: np.ndarray


def templated_prompt(preparer: Preparer, messages, mel_bins: int, name: str = "prompt") -> dict:
    """One prompt's frames (ending in ``<|assistant|>``) and log-mel pieces (template format)."""
    if not messages:
        raise PromptError(f"{name} has no messages")
    for role, modality, _ in messages:
        if role == "assistant":
            raise PromptError(f"{name}: prompts hold user/system messages; the answer is generated")
    example = Example(name, "dialogue", tuple(Message(*m) for m in messages))
    prepared, skipped = preparer.prepare([example])
    if skipped:
        raise PromptError(f"{name}: {skipped[0][2]}")
    out = template(prepared[0], preparer.vocab, output_lengths, piece_frames=preparer.cfg.data.piece_frames,
                   mel_bins=mel_bins)
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
    pieces = max(len(p["mel"]) for p in prompts)
    first_prompt = prompts[0]
    streams = first_prompt["ids"].shape[1]
    piece_shape = first_prompt["mel"].shape[1:]
    out = PromptRows(ids=np.zeros((rows, frames, streams), np.int32), first=np.zeros((rows,), np.int32),
                     mel=np.zeros((rows, pieces) + piece_shape, np.float32),
                     mel_lengths=np.zeros((rows, pieces), np.int32), mel_clip_lengths=np.zeros((rows, pieces), np.int32),
                     mel_start=np.zeros((rows, pieces), np.int32), prompt=np.asarray(order, np.int32))
    for r, p in enumerate(order):
        src = prompts[max(p, 0)]
        first = frames - len(src["ids"])
        out.ids[r, first:] = src["ids"]
        out.first[r] = first
        n = len(src["mel"])
        out.mel[r, :n] = src["mel"]
        out.mel_lengths[r, :n] = src["mel_lengths"]
        out.mel_clip_lengths[r, :n] = src["mel_clip_lengths"]
        out.mel_start[r, :n] = src["mel_start"] + first
    return out
