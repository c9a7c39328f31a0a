"""Next-frame multi-stream loss (docs/model.md, Loss), chunked over frames.

Position t predicts frame t+1 on every stream, weighted by the loss mask of frame t+1.
Stream 0 uses a softmax over the whole vocabulary (target id 0 ignored); streams >= 1
use a softmax over the audio range of all streams together, with the target taken
relative to the first audio id (targets outside that range get weight 0). A target in a
different segment than its position (packed rows) or in padding gets weight 0.

loss = Σ weight × CE / (number of positions whose stream-0 weight is non-zero)

The denominator counts those positions whatever their target, as the reference does: a
weighted stream-0 target 0 (the template's text token 0, see ``data.text_token0_as_pad``)
adds to it but not to the sum. The loss needs no switch of its own: with
``text_token0_as_pad: false`` no template gives a weighted target 0, so the two agree.

Logits are computed one chunk of ``chunk`` frames at a time inside a rematerialised
scan, so neither ``[batch, frames, vocab]`` nor ``[batch, frames, streams-1, audio]``
fp32 logits ever exist whole, in the forward or the backward pass.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bagpiper_jax.sharding import Rules, constrain
from bagpiper_jax.vocab import Vocab


def next_frame_targets(ids: jax.Array, loss_mask: jax.Array, segment_ids: jax.Array, vocab: Vocab):
    """Targets ``[batch, frames, streams]``, their cross-entropy weights and the positions
    the loss divides by, shifted by one frame.

    Stream >= 1 targets are returned relative to ``vocab.audio_offset``. The last
    position of a row has weight 0. Returns ``(targets, weights, counted)``: ``weights``
    are 0 for ignored targets (stream-0 id 0, streams >= 1 outside the audio range);
    ``counted [batch, frames]`` marks the positions whose stream-0 weight is non-zero,
    ignored target or not (the denominator).
    """
    targets = jnp.roll(ids, -1, axis=1)
    weights = jnp.roll(loss_mask.astype(jnp.float32), -1, axis=1)
    next_segment = jnp.roll(segment_ids, -1, axis=1)
    frames = ids.shape[1]
    keep = (next_segment == segment_ids) & (next_segment != 0) & (jnp.arange(frames) < frames - 1)
    weights = weights * keep[..., None]
    audio = targets[..., 1:] - vocab.audio_offset
    valid = jnp.concatenate([targets[..., :1] != 0, (audio >= 0) & (audio < vocab.audio_size)], axis=-1)
    targets = jnp.concatenate([targets[..., :1], jnp.clip(audio, 0, vocab.audio_size - 1)], axis=-1)
    return targets, weights * valid, weights[..., 0] != 0


def _cross_entropy(logits: jax.Array, targets: jax.Array):
    """Per-position CE and argmax-correctness of float32 ``logits [..., classes]``."""
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    ce = jax.nn.logsumexp(logits, axis=-1) - target_logit
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return ce, correct


def loss_positions(ids: jax.Array, loss_mask: jax.Array, segment_ids: jax.Array, vocab: Vocab) -> jax.Array:
    """The loss denominator: positions whose stream-0 weight is non-zero (float32 scalar)."""
    _, _, counted = next_frame_targets(ids, loss_mask, segment_ids, vocab)
    return jnp.sum(counted).astype(jnp.float32)


def multistream_loss(
    hidden: jax.Array,
    head: jax.Array,
    stream_emb: jax.Array,
    ids: jax.Array,
    loss_mask: jax.Array,
    segment_ids: jax.Array,
    vocab: Vocab,
    chunk: int,
    rules: Rules = (),
    denominator: jax.Array | None = None,
    sources: jax.Array | None = None,
    num_sources: int = 1,
):
    """Loss and per-stream (and per-source) metric sums.

    Args:
      hidden: final-norm hidden states ``[batch, frames, hidden]`` (compute dtype).
      head: lm_head kernel ``[hidden, vocab]``; stream_emb: ``[streams, hidden]``.
      ids, loss_mask: ``[batch, frames, streams]``; segment_ids: ``[batch, frames]``.
      denominator: divide by this instead of this batch's own positions (gradient
        accumulation divides every micro-batch by the whole batch's positions).
      sources: int32 ``[batch, frames]`` mixture source of each frame (None: all 0) of
        ``num_sources``.
    Returns:
      ``(loss, sums)``; ``sums`` holds ``stream_loss_sum``, ``stream_correct_sum``,
      ``stream_weight`` (each ``[streams]``), ``positions``, and ``source_loss_sum``,
      ``source_positions``, ``source_frames`` (each ``[num_sources]``); see
      :func:`stream_metrics`.
    """
    targets, weights, counted = next_frame_targets(ids, loss_mask, segment_ids, vocab)
    sources = jnp.zeros(segment_ids.shape, jnp.int32) if sources is None else sources
    source_hot = jax.nn.one_hot(sources, num_sources, dtype=jnp.float32)  # [batch, frames, sources]
    batch, frames, _ = hidden.shape
    chunk = min(chunk, frames)
    pad = -frames % chunk
    if pad:
        hidden, targets, weights, hot = (
            jnp.pad(x, ((0, 0), (0, pad), (0, 0))) for x in (hidden, targets, weights, source_hot)
        )
    else:
        hot = source_hot
    n_chunks = (frames + pad) // chunk

    def chunked(x):  # [batch, frames, ...] -> [chunks, batch, chunk, ...]
        return jnp.moveaxis(x.reshape(batch, n_chunks, chunk, *x.shape[2:]), 1, 0)

    dtype = hidden.dtype
    head = head.astype(dtype)
    audio_head = head[:, vocab.audio_offset : vocab.audio_offset + vocab.audio_size]
    extra = stream_emb[1:].astype(dtype)  # [streams-1, hidden]

    def chunk_stats(carry, xs):
        h, tgt, w, src = xs  # [batch, chunk, hidden], [batch, chunk, streams] x2, [batch, chunk, sources]
        logits0 = jnp.einsum("bcd,dv->bcv", h, head, preferred_element_type=jnp.float32)
        logits0 = constrain(logits0, ("activation_batch", "activation_length", "activation_vocab"), rules)
        ce0, ok0 = _cross_entropy(logits0, tgt[..., 0])
        hs = h[:, :, None, :] + extra  # [batch, chunk, streams-1, hidden]
        logits_a = jnp.einsum("bcsd,dv->bcsv", hs, audio_head, preferred_element_type=jnp.float32)
        ce_a, ok_a = _cross_entropy(logits_a, tgt[..., 1:])
        ce = jnp.concatenate([ce0[..., None], ce_a], axis=-1)
        ok = jnp.concatenate([ok0[..., None], ok_a], axis=-1)
        loss_sum, correct_sum, source_sum = carry
        source_sum = source_sum + jnp.einsum("bc,bcs->s", jnp.sum(w * ce, axis=-1), src)
        return (loss_sum + jnp.sum(w * ce, axis=(0, 1)), correct_sum + jnp.sum(w * ok, axis=(0, 1)), source_sum), None

    zeros = jnp.zeros((ids.shape[-1],), jnp.float32)
    (loss_sum, correct_sum, source_loss_sum), _ = jax.lax.scan(
        jax.checkpoint(chunk_stats, prevent_cse=False),
        (zeros, zeros, jnp.zeros((num_sources,), jnp.float32)),
        (chunked(hidden), chunked(targets), chunked(weights), chunked(hot)),
    )
    positions = jnp.sum(counted).astype(jnp.float32)
    loss = jnp.sum(loss_sum) / jnp.maximum(positions if denominator is None else denominator, 1.0)
    sums = {
        "stream_loss_sum": loss_sum,
        "stream_correct_sum": correct_sum,
        "stream_weight": jnp.sum(weights, axis=(0, 1)),
        "positions": positions,
        "source_loss_sum": source_loss_sum,
        "source_positions": jnp.einsum("bf,bfs->s", counted.astype(jnp.float32), source_hot),
        "source_frames": jnp.einsum("bf,bfs->s", (segment_ids != 0).astype(jnp.float32), source_hot),
    }
    return loss, sums


def stream_metrics(sums: dict) -> dict:
    """Per-stream weighted-mean loss and accuracy ``[streams]``, and per mixture source the
    loss (as the total loss, over that source's positions) and frames ``[sources]``, from
    (accumulated) sums."""
    safe = jnp.maximum(sums["stream_weight"], 1e-9)
    return {
        "loss": jnp.sum(sums["stream_loss_sum"]) / jnp.maximum(sums["positions"], 1.0),
        "stream_loss": sums["stream_loss_sum"] / safe,
        "stream_accuracy": sums["stream_correct_sum"] / safe,
        "positions": sums["positions"],
        "source_loss": sums["source_loss_sum"] / jnp.maximum(sums["source_positions"], 1.0),
        "source_frames": sums["source_frames"],
    }
