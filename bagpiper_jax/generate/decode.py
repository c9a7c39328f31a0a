"""Jitted KV-cache decoding of multi-stream frames (docs/generation.md).

One call: prefill the left-padded prompt frames (continuous audio features injected via
the adaptor) into a preallocated cache, then a ``lax.while_loop`` that feeds one frame
per step for every row, restricts and samples the next frame (see
:mod:`bagpiper_jax.generate.rules`), and stops when every row has ended its answer or the
cache is full.

Classifier-free guidance (``guidance=True``) appends one unconditional row per row. Inside
a segment whose modality has a guidance scale ``s > 1``, the two rows' logits combine as
``s * cond + (1 - s) * uncond`` on every stream, before the masks, and the unconditional
row is fed the segment's modality token and frames too. The reference's row
(``generate.unconditional_row: reference``) holds the pad id for everything before such a
segment, ``<|assistant|>`` included: its prompt is all pad, it is fed pad frames outside
guided segments, and when a row starts a guided segment after an earlier one its
unconditional history is rebuilt as pad frames (a chunked prefill, run only then). The
``audio_segments`` row keeps ``<|assistant|>`` and sees every audio segment.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from bagpiper_jax.audio_encoder.pieces import Continuous
from bagpiper_jax.generate.rules import DONE, DecodeRules, RowState
from bagpiper_jax.generate.sampling import sample
from bagpiper_jax.model.kv_cache import KVCache


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Prompts:
    """Left-padded prompt rows (one per sample: prompts are repeated ``samples`` times).

    ids: int32 ``[rows, frames, streams]``, each row ending in its ``<|assistant|>`` frame
      at the last slot, padding (id 0) before slot ``first``.
    first: int32 ``[rows]`` slot of each row's ``<|bos|>``.
    continuous: encoder features of the prompts' audio (frames index the slots), or None.
    """

    ids: jax.Array
    first: jax.Array
    continuous: Continuous | None = None


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Decoded:
    """frames: int32 ``[rows, slots, streams]``: the prompt, then the answer frames from slot
    ``prompt frames`` on (0 after a row's end); ``end``: int32 ``[rows]`` slots used;
    ``finished``: bool ``[rows]``, False where the cache filled first."""

    frames: jax.Array
    end: jax.Array
    finished: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class _Carry:
    cache: KVCache
    frame: jax.Array  # [rows, streams]: fed at `slot`
    unconditional: jax.Array  # [rows, streams]: fed at `slot` to the unconditional rows
    slot: jax.Array
    state: RowState
    frames: jax.Array
    end: jax.Array
    seen_guided: jax.Array  # [rows] bool: the unconditional row holds frames of a guided segment


def _own_blocks(rest: jax.Array, streams: int) -> jax.Array:
    """``[rows, streams-1, audio_size]`` -> each stream's own block ``[rows, streams-1, block]``."""
    blocks = rest.reshape(rest.shape[0], streams - 1, streams, -1)
    return blocks[:, jnp.arange(streams - 1), jnp.arange(1, streams)]


def _guide(logits: jax.Array, rows: int, use: jax.Array, scale: jax.Array) -> jax.Array:
    """Rows ``[:rows]`` of ``logits`` combined with their unconditional rows ``[rows:]`` where
    ``use [rows]``: ``scale * cond + (1 - scale) * uncond``."""
    cond, uncond = logits[:rows], logits[rows:]
    shape = (rows,) + (1,) * (logits.ndim - 1)
    scale = scale.reshape(shape)
    return jnp.where(use.reshape(shape), scale * cond + (1 - scale) * uncond, cond)


def _with_unconditional(prompts: Prompts, rules: DecodeRules) -> Prompts:
    """Appends the unconditional rows: all-pad prompts (no continuous input) whose last frame
    holds :meth:`DecodeRules.unconditional_start`."""
    rows = prompts.ids.shape[0]
    unconditional = jnp.zeros_like(prompts.ids).at[:, -1, 0].set(rules.unconditional_start(rows))
    continuous = None
    if prompts.continuous is not None:
        features, frames = prompts.continuous.features, prompts.continuous.frames
        continuous = Continuous(
            jnp.concatenate([features, jnp.zeros_like(features)]), jnp.concatenate([frames, jnp.full_like(frames, -1)])
        )
    return Prompts(
        jnp.concatenate([prompts.ids, unconditional]), jnp.concatenate([prompts.first, prompts.first]), continuous
    )


def _pad_history(model, cache: KVCache, first: jax.Array, reset: jax.Array) -> KVCache:
    """``cache`` whose unconditional rows (those after the first ``rows = len(reset)``) hold,
    where ``reset [rows]``, the keys and values of pad frames in every slot: the history the
    reference's unconditional row starts a guided segment from. Fills the slots in chunks so
    that attention never spans the whole cache at once."""
    rows, chunk = reset.shape[0], math.gcd(cache.slots, 128)
    half = KVCache(cache.k[:, rows:], cache.v[:, rows:])
    pads = jnp.zeros((rows, chunk, model.cfg.num_streams), jnp.int32)

    def fill(c: KVCache, start: jax.Array):
        return model.extend(pads, first, c, start)[1], None

    fresh, _ = jax.lax.scan(fill, half, jnp.arange(0, cache.slots, chunk))
    pick = reset[None, :, None, None, None]
    return KVCache(
        cache.k.at[:, rows:].set(jnp.where(pick, fresh.k, half.k)),
        cache.v.at[:, rows:].set(jnp.where(pick, fresh.v, half.v)),
    )


@functools.partial(jax.jit, static_argnames=("graphdef", "rules", "slots", "guidance"))
def decode(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    prompts: Prompts,
    key: jax.Array,
    *,
    rules: DecodeRules,
    slots: int,
    guidance: bool = False,
) -> Decoded:
    """Generates answers for ``prompts`` with a cache of ``slots`` frames per row.

    ``key``: PRNG key; row ``r`` samples with ``fold_in(fold_in(key, r), slot)``, so a row's
    draws do not depend on its batch-mates. ``guidance``: add the unconditional rows and
    guide the segments whose modality's ``guidance_scale`` is above 1 (without them no
    segment is guided).
    """
    model = nnx.merge(graphdef, params)
    rows, prompt_frames, streams = prompts.ids.shape
    if prompt_frames >= slots:
        raise ValueError(f"prompt of {prompt_frames} frames leaves no room in a cache of {slots} slots")
    fed = _with_unconditional(prompts, rules) if guidance else prompts
    rebuilds = guidance and rules.settings.unconditional_row == "reference"
    arch = model.cfg
    cache = KVCache.zeros(
        arch.layers, fed.ids.shape[0], slots, arch.kv_heads, arch.head_dim, model.compute_dtype, model.rules
    )
    _, cache = model.extend(fed.ids[:, :-1], fed.first, cache, jnp.int32(0), fed.continuous)
    row_keys = jax.vmap(lambda r: jax.random.fold_in(key, r))(jnp.arange(rows))
    frames = jnp.zeros((rows, slots, streams), jnp.int32).at[:, :prompt_frames].set(prompts.ids)

    def body(c: _Carry) -> _Carry:
        state, cache, fed_frame = c.state, c.cache, c.frame
        starts = rules.starts_guided_segment(state)
        if rebuilds:
            reset = starts & c.seen_guided
            cache = jax.lax.cond(
                jnp.any(reset), lambda k: _pad_history(model, k, prompts.first, reset), lambda k: k, cache
            )
        if guidance:
            fed_frame = jnp.concatenate([c.frame, c.unconditional])
        hidden, cache = model.extend(fed_frame[:, None], fed.first, cache, c.slot)
        logits0, rest = model.stream_logits(hidden)
        logits0, rest = logits0[:, 0], _own_blocks(rest[:, 0], streams)
        if guidance:
            guided, scale = rules.guidance(state)
            logits0 = _guide(logits0, rows, guided, scale)
            rest = _guide(rest, rows, guided, scale)
        temperature, top_k = rules.sampling(state)
        keys = jax.vmap(lambda k: jax.random.split(jax.random.fold_in(k, c.slot)))(row_keys)
        stream0 = sample(logits0, rules.stream0_allowed(state), temperature, top_k, keys[:, 0], rules.max_top_k)
        blocks = sample(rest, rules.rest_allowed(state), temperature, top_k, keys[:, 1], rules.max_top_k)
        frame = rules.assemble(state, stream0, blocks)
        out = jax.lax.dynamic_update_slice_in_dim(c.frames, frame[:, None], c.slot + 1, axis=1)
        # The reference feeds a cut segment's last frame with streams 1.. set to 0.
        feed = frame.at[:, 1:].set(jnp.where(rules.cut(state, stream0)[:, None], 0, frame[:, 1:]))
        unconditional = jnp.where(rules.unconditional_sees(state, stream0)[:, None], feed, 0)
        live = state.phase != DONE
        return _Carry(
            cache,
            feed,
            unconditional,
            c.slot + 1,
            rules.advance(state, stream0),
            out,
            jnp.where(live, c.slot + 2, c.end),
            c.seen_guided | starts,
        )

    def running(c: _Carry) -> jax.Array:
        return (c.slot + 1 < slots) & jnp.any(c.state.phase != DONE)

    start = _Carry(
        cache,
        prompts.ids[:, -1],
        fed.ids[rows:, -1] if guidance else jnp.zeros_like(prompts.ids[:, -1]),
        jnp.int32(prompt_frames - 1),
        RowState.start(rows),
        frames,
        jnp.full((rows,), prompt_frames, jnp.int32),
        jnp.zeros((rows,), bool),
    )
    final = jax.lax.while_loop(running, body, start)
    return Decoded(final.frames, final.end, final.state.phase == DONE)
