"""Prepared example -> multi-stream frames with loss weights (docs/data.md, Sequence format;
docs/model.md, Loss).

Frames: ``<|bos|>``, then per message ``<|role|> <|modality|> content END`` where END is
``<|eot|>`` when the next message has the same role, else ``<|eos|>``. Content:

- text: one frame per token, stream 0 = ``text_offset + token``, other streams pad (0).
  Tokenizer id 0 (Qwen3's "!") becomes the pad id 0 with its loss weight kept, as the
  reference's ``np.where(seq == 0, 0, seq + offset)`` makes it (``text_token0_as_pad``;
  docs/data.md, Sequence format);
- assistant audio (codec codes): delay-interleaved frames with per-stream audio ids;
- user/system audio (log-mel): one placeholder frame (all streams 0) per encoder token,
  filled by ``adaptor(encoder(mel))`` in the model. The mel is cut into pieces of
  ``piece_frames`` frames (one encoder attention window each: windows never span two
  pieces, so encoding pieces separately equals encoding the clip whole), each with the
  frame where its tokens start.

Loss weights (``loss_region="assistant"``: assistant messages only; ``"all"``: every
message): role, modality and END tokens 1 on stream 0; text 1 on stream 0; codec audio
``1 / streams`` (0.125) on every stream; continuous-audio frames and ``<|bos|>`` 0.

Output (numpy), the pieces in the layout of
:class:`~bagpiper_jax.audio_encoder.pieces.MelPieces` for one row::

    ids [frames, streams] int32, loss_mask [frames, streams] float32,
    mel [mel_frames, mel_bins] float32: the example's log-mel frames in order (the pieces
        back to back, unpadded), mel_offset [pieces] int32: each piece's first frame in it,
    mel_lengths [pieces] int32, mel_clip_lengths [pieces] int32 (frames of the whole clip
    the piece was cut from), mel_start [pieces] int32 (frame of its first encoder token)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from bagpiper_jax.codec.interleave import delay_interleave, interleaved_ids
from bagpiper_jax.data.records import CONTINUOUS_KINDS, PreparedExample, PreparedMessage
from bagpiper_jax.errors import BagpiperError
from bagpiper_jax.vocab import BOS, EOS, EOT, MODALITY_IDS, PAD, ROLE_IDS, Vocab

TokensFor = Callable[[int], int]  # mel frames -> encoder tokens


class TemplateError(BagpiperError):
    """A prepared example does not fit the model's vocabulary/streams; names the example."""


def example_frames(ex: PreparedExample, vocab: Vocab, tokens_for: TokensFor) -> int:
    """Frames the example occupies once templated (what the index stores)."""
    n = 1
    for m in ex.messages:
        if m.kind == "text":
            n += 3 + len(m.array)
        elif m.kind == "codes":
            n += 3 + len(m.array) + vocab.num_streams - 1
        else:
            n += 3 + int(tokens_for(m.mel_frames))
    return n


def text_frame_ids(tokens: np.ndarray, vocab: Vocab, token0_as_pad: bool) -> np.ndarray:
    """Stream-0 ids of text tokens: ``text_offset + token``, except token 0 -> the pad id 0
    when ``token0_as_pad`` (the reference's mapping, which the released weights learned)."""
    ids = vocab.text_ids(tokens)
    return np.where(np.asarray(tokens) == 0, PAD, ids) if token0_as_pad else ids


def template(
    ex: PreparedExample,
    vocab: Vocab,
    tokens_for: TokensFor,
    *,
    piece_frames: int,
    mel_bins: int,
    loss_region: str = "assistant",
    guidance_keep: int | None = None,
    text_token0_as_pad: bool = True,
    guidance_keep_other_audio: bool = True,
) -> dict[str, np.ndarray]:
    """Frames, loss weights and continuous-audio pieces of one example.

    Args:
      guidance_keep: classifier-free-guidance dropout: index (into ``ex.messages``) of the
        one assistant audio message to keep; every other frame and weight is zeroed and the
        continuous inputs are dropped. ``None``: no dropout.
      text_token0_as_pad: text token 0 becomes id 0 (weight kept) instead of ``text_offset``.
      guidance_keep_other_audio: under guidance dropout, the content frames of the other
        codec-audio messages keep their delay-interleaved ids (weight 0), as in the
        reference; False zeroes them with the rest.
    """
    s = vocab.num_streams
    sizes = []  # content frames per message (validated first, then written into one buffer)
    for m in ex.messages:
        if m.kind == "text":
            sizes.append(len(m.array))
        elif m.kind == "codes":
            if m.array.ndim != 2 or m.array.shape[1] != s:
                raise TemplateError(f"example {ex.id}: codes of shape {m.array.shape}, the model has {s} streams")
            if m.array.size and (m.array.min() < 0 or m.array.max() >= vocab.codebook_size):
                interleaved_ids(m.array, vocab)  # raises, naming the stream and the range
            sizes.append(len(m.array) + s - 1)
        elif m.kind in CONTINUOUS_KINDS:
            if m.kind == "mel" and (m.array.ndim != 2 or m.array.shape[1] != mel_bins):
                raise TemplateError(f"example {ex.id}: log-mel of shape {m.array.shape}, expected [frames, {mel_bins}]")
            sizes.append(int(tokens_for(m.mel_frames)))
        else:
            raise TemplateError(f"example {ex.id}: unknown message kind {m.kind!r}")
    out_ids = np.zeros((1 + sum(sizes) + 3 * len(sizes), s), np.int32)
    out_mask = np.zeros(out_ids.shape, np.float32)
    out_ids[0, 0] = BOS
    spans, audio_content, mel_pieces, mel_start, mel_clip = [], [], [], [], []
    frame = 1
    for i, (m, n) in enumerate(zip(ex.messages, sizes)):
        w = 1.0 if loss_region == "all" or m.role == "assistant" else 0.0
        c = frame + 2  # first content frame
        out_ids[frame, 0], out_ids[frame + 1, 0] = ROLE_IDS[m.role], MODALITY_IDS[m.modality]
        out_mask[frame:c, 0] = w
        if m.kind == "text":
            out_ids[c : c + n, 0] = text_frame_ids(m.array, vocab, text_token0_as_pad)
            out_mask[c : c + n, 0] = w
        elif m.kind == "codes":  # delay interleave: stream k shifted by k frames, gaps hold its pad id
            pads = vocab.audio_pads
            delay_interleave(m.array + (pads + 1), pads, out=out_ids[c : c + n])
            out_mask[c : c + n] = w / s
            audio_content.append((c, c + n))
        else:  # continuous audio: placeholder frames (zero), cut into pieces of one encoder window
            for q in range(0, m.mel_frames, piece_frames):
                mel_pieces.append(min(piece_frames, m.mel_frames - q))
                mel_start.append(c + int(tokens_for(q)))
                mel_clip.append(m.mel_frames)
        end = c + n
        last = i + 1 == len(ex.messages)
        out_ids[end, 0] = EOT if not last and ex.messages[i + 1].role == m.role else EOS
        out_mask[end, 0] = w
        spans.append((frame, end + 1))
        frame = end + 1
    if guidance_keep is not None:
        keep = np.zeros(len(out_ids), bool)
        keep[slice(*spans[guidance_keep])] = True
        keep_ids = keep.copy()
        if guidance_keep_other_audio:  # the reference writes every codec entry back after zeroing
            for start, end in audio_content:
                keep_ids[start:end] = True
        out_ids[~keep_ids], out_mask[~keep] = 0, 0.0
        mel_pieces, mel_start, mel_clip = [], [], []
    lengths = np.asarray(mel_pieces, np.int32)
    # The pieces of a clip are consecutive slices of it: the stream is the clips in order.
    clips = [_log_mel(ex, m, mel_bins) for m in ex.messages if m.kind in CONTINUOUS_KINDS] if mel_pieces else []
    mel = np.concatenate(clips) if len(clips) > 1 else clips[0] if clips else np.zeros((0, mel_bins), np.float32)
    return {
        "ids": out_ids,
        "loss_mask": out_mask,
        "mel": mel,
        "mel_offset": (np.cumsum(lengths, dtype=np.int32) - lengths).astype(np.int32),
        "mel_lengths": lengths,
        "mel_clip_lengths": np.asarray(mel_clip, np.int32),
        "mel_start": np.asarray(mel_start, np.int32),
    }


def _log_mel(ex: PreparedExample, message: PreparedMessage, mel_bins: int) -> np.ndarray:
    mel = message.log_mel(mel_bins)
    if mel.shape != (message.mel_frames, mel_bins):
        raise TemplateError(
            f"example {ex.id}: user audio gives log-mel of shape {mel.shape}, its record says "
            f"{message.mel_frames} frames"
        )
    return mel


def guidance_candidates(ex: PreparedExample) -> list[int]:
    """Indices of the assistant audio messages (those CFG dropout may keep)."""
    return [i for i, m in enumerate(ex.messages) if m.role == "assistant" and m.kind == "codes"]
