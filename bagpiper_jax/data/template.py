"""Prepared example -> multi-stream frames with loss weights (DESIGN §2.4, §5).

Frames: ``<|bos|>``, then per message ``<|role|> <|modality|> content END`` where END is
``<|eot|>`` when the next message has the same role, else ``<|eos|>``. Content:

- text: one frame per token, stream 0 = ``text_offset + token``, other streams pad (0);
- assistant audio (codec codes): delay-interleaved frames with per-stream audio ids;
- user/system audio (log-mel): one placeholder frame (all streams 0) per encoder token,
  filled by ``adaptor(encoder(mel))`` in the model. The mel is cut into pieces of
  ``piece_frames`` frames (one encoder attention window each: windows never span two
  pieces, so encoding pieces separately equals encoding the clip whole), each with the
  frame where its tokens start.

Loss weights (``loss_region="assistant"``: assistant messages only; ``"all"``: every
message): role, modality and END tokens 1 on stream 0; text 1 on stream 0; codec audio
``1 / streams`` (0.125) on every stream; continuous-audio frames and ``<|bos|>`` 0.

Output (numpy, the element format of the Grain pipeline)::

    ids [frames, streams] int32, loss_mask [frames, streams] float32,
    mel [pieces, piece_frames, mel_bins] float32, mel_lengths [pieces] int32,
    mel_clip_lengths [pieces] int32 (frames of the whole clip the piece was cut from),
    mel_start [pieces] int32
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from bagpiper_jax.codec.interleave import interleaved_ids
from bagpiper_jax.data.records import PreparedExample
from bagpiper_jax.vocab import BOS, EOS, EOT, MODALITY_IDS, ROLE_IDS, Vocab

TokensFor = Callable[[int], int]  # mel frames -> encoder tokens


class TemplateError(ValueError):
    """A prepared example does not fit the model's vocabulary/streams; names the example."""


def example_frames(ex: PreparedExample, vocab: Vocab, tokens_for: TokensFor) -> int:
    """Frames the example occupies once templated (what the index stores)."""
    s = vocab.num_streams
    n = 1
    for m in ex.messages:
        n += 3 + {"text": lambda a: len(a), "codes": lambda a: len(a) + s - 1,
                  "mel": lambda a: int(tokens_for(len(a)))}[m.kind](m.array)
    return n


def template(ex: PreparedExample, vocab: Vocab, tokens_for: TokensFor, *, piece_frames: int, mel_bins: int,
             loss_region: str = "assistant", cfg_keep: int | None = None) -> dict[str, np.ndarray]:
    """Frames, loss weights and continuous-audio pieces of one example.

    Args:
      cfg_keep: classifier-free-guidance dropout: index (into ``ex.messages``) of the one
        assistant audio message to keep; every other frame and weight is zeroed and the
        continuous inputs are dropped. ``None``: no dropout.
    """
    s = vocab.num_streams
    ids, mask, spans = [], [], []
    mel_pieces, mel_start, mel_clip = [], [], []
    frame = 0

    def emit(block_ids: np.ndarray, block_mask: np.ndarray):
        nonlocal frame
        ids.append(block_ids)
        mask.append(block_mask)
        frame += len(block_ids)

    def special(token: int, weight: float):
        row_ids, row_mask = np.zeros((1, s), np.int32), np.zeros((1, s), np.float32)
        row_ids[0, 0], row_mask[0, 0] = token, weight
        emit(row_ids, row_mask)

    special(BOS, 0.0)
    for i, m in enumerate(ex.messages):
        w = 1.0 if loss_region == "all" or m.role == "assistant" else 0.0
        start = frame
        special(ROLE_IDS[m.role], w)
        special(MODALITY_IDS[m.modality], w)
        if m.kind == "text":
            block = np.zeros((len(m.array), s), np.int32)
            block[:, 0] = vocab.text_ids(m.array)
            block_mask = np.zeros(block.shape, np.float32)
            block_mask[:, 0] = w
            emit(block, block_mask)
        elif m.kind == "codes":
            if m.array.ndim != 2 or m.array.shape[1] != s:
                raise TemplateError(f"example {ex.id}: codes of shape {m.array.shape}, the model has {s} streams")
            block = interleaved_ids(m.array, vocab)
            emit(block, np.full(block.shape, w / s, np.float32))
        elif m.kind == "mel":
            if m.array.ndim != 2 or m.array.shape[1] != mel_bins:
                raise TemplateError(f"example {ex.id}: log-mel of shape {m.array.shape}, expected "
                                    f"[frames, {mel_bins}]")
            for p in range(0, len(m.array), piece_frames):
                mel_pieces.append(m.array[p:p + piece_frames])
                mel_start.append(frame + int(tokens_for(p)))
                mel_clip.append(len(m.array))
            n = int(tokens_for(len(m.array)))
            emit(np.zeros((n, s), np.int32), np.zeros((n, s), np.float32))
        else:
            raise TemplateError(f"example {ex.id}: unknown message kind {m.kind!r}")
        last = i + 1 == len(ex.messages)
        special(EOT if not last and ex.messages[i + 1].role == m.role else EOS, w)
        spans.append((start, frame))
    out_ids, out_mask = np.concatenate(ids), np.concatenate(mask)
    if cfg_keep is not None:
        keep = np.zeros(len(out_ids), bool)
        keep[slice(*spans[cfg_keep])] = True
        out_ids[~keep], out_mask[~keep] = 0, 0.0
        mel_pieces, mel_start, mel_clip = [], [], []
    mel = np.zeros((len(mel_pieces), piece_frames, mel_bins), np.float32)
    for j, piece in enumerate(mel_pieces):
        mel[j, :len(piece)] = piece
    return {"ids": out_ids, "loss_mask": out_mask, "mel": mel,
            "mel_lengths": np.asarray([len(p) for p in mel_pieces], np.int32),
            "mel_clip_lengths": np.asarray(mel_clip, np.int32), "mel_start": np.asarray(mel_start, np.int32)}


def cfg_candidates(ex: PreparedExample) -> list[int]:
    """Indices of the assistant audio messages (those CFG dropout may keep)."""
    return [i for i, m in enumerate(ex.messages) if m.role == "assistant" and m.kind == "codes"]
