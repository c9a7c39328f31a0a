"""Jitted KV-cache decoding of multi-stream frames (docs/generation.md).

One call: prefill the left-padded prompt frames (continuous audio features injected via
the adaptor) into a preallocated cache, then a ``lax.while_loop`` that feeds one frame
per step for every row, restricts and samples the next frame (see
:mod:`bagpiper_jax.generate.rules`), and stops when every row has ended its answer or the
cache is full.

Classifier-free guidance (a ``guidance_scale``) appends one unconditional row per row: its
prompt frames are all pad (id 0 on every stream, no continuous input) and it sees the
frames of audio segments only (pads elsewhere), as the CFG dropout of training does. In
audio segments both rows' logits combine as ``s * cond - (s - 1) * uncond`` and both
receive the frame sampled from the result.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from bagpiper_jax.audio_encoder.pieces import Continuous
from bagpiper_jax.generate.rules import AUDIO_PHASE, DONE, DecodeRules, RowState
from bagpiper_jax.generate.sampling import sample
from bagpiper_jax.model.kv_cache import KVCache
from bagpiper_jax.vocab import ASSISTANT, PAD, TEXT


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
    frame: jax.Array  # [model rows, streams]: fed at `slot`
    slot: jax.Array
    state: RowState
    frames: jax.Array
    end: jax.Array


def _own_blocks(rest: jax.Array, streams: int) -> jax.Array:
    """``[rows, streams-1, audio_size]`` -> each stream's own block ``[rows, streams-1, block]``."""
    blocks = rest.reshape(rest.shape[0], streams - 1, streams, -1)
    return blocks[:, jnp.arange(streams - 1), jnp.arange(1, streams)]


def _guide(logits: jax.Array, rows: int, use: jax.Array, scale: jax.Array) -> jax.Array:
    cond, uncond = logits[:rows], logits[rows:]
    use = use.reshape((rows,) + (1,) * (logits.ndim - 1))
    return jnp.where(use, scale * cond - (scale - 1) * uncond, cond)


def _with_unconditional(prompts: Prompts, rules: DecodeRules) -> Prompts:
    """Appends the unconditional rows: all-pad prompts whose last frame is ``<|assistant|>``
    unless the plan makes the first segment text."""
    rows = prompts.ids.shape[0]
    last = jnp.where(rules.planned(jnp.zeros((rows,), jnp.int32)) == TEXT, PAD, ASSISTANT)
    unconditional = jnp.zeros_like(prompts.ids).at[:, -1, 0].set(last)
    continuous = None
    if prompts.continuous is not None:
        features, frames = prompts.continuous.features, prompts.continuous.frames
        continuous = Continuous(
            jnp.concatenate([features, jnp.zeros_like(features)]), jnp.concatenate([frames, jnp.full_like(frames, -1)])
        )
    return Prompts(
        jnp.concatenate([prompts.ids, unconditional]), jnp.concatenate([prompts.first, prompts.first]), continuous
    )


@functools.partial(jax.jit, static_argnames=("graphdef", "rules", "slots"))
def decode(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    prompts: Prompts,
    key: jax.Array,
    guidance_scale: jax.Array | None = None,
    *,
    rules: DecodeRules,
    slots: int,
) -> Decoded:
    """Generates answers for ``prompts`` with a cache of ``slots`` frames per row.

    ``key``: PRNG key; row ``r`` samples with ``fold_in(fold_in(key, r), slot)``, so a row's
    draws do not depend on its batch-mates. ``guidance_scale``: float32 scalar, run
    classifier-free guidance on audio with this scale (1 gives the same frames as None);
    None: no unconditional rows.
    """
    guidance = guidance_scale is not None
    model = nnx.merge(graphdef, params)
    settings, vocab = rules.settings, rules.vocab
    rows, prompt_frames, streams = prompts.ids.shape
    if prompt_frames >= slots:
        raise ValueError(f"prompt of {prompt_frames} frames leaves no room in a cache of {slots} slots")
    fed = _with_unconditional(prompts, rules) if guidance else prompts
    arch = model.cfg
    cache = KVCache.zeros(
        arch.layers, fed.ids.shape[0], slots, arch.kv_heads, arch.head_dim, model.compute_dtype, model.rules
    )
    _, cache = model.extend(fed.ids[:, :-1], fed.first, cache, jnp.int32(0), fed.continuous)
    row_keys = jax.vmap(lambda r: jax.random.fold_in(key, r))(jnp.arange(rows))
    pads = jnp.asarray(vocab.audio_pads[1:streams])
    max_top_k = max(settings.text_top_k, settings.audio_top_k)
    frames = jnp.zeros((rows, slots, streams), jnp.int32).at[:, :prompt_frames].set(prompts.ids)

    def body(c: _Carry) -> _Carry:
        hidden, cache = model.extend(c.frame[:, None], fed.first, c.cache, c.slot)
        logits0, rest = model.stream_logits(hidden)
        logits0, rest = logits0[:, 0], _own_blocks(rest[:, 0], streams)
        audio = c.state.phase == AUDIO_PHASE
        if guidance:
            logits0 = _guide(logits0, rows, audio, guidance_scale)
            rest = _guide(rest, rows, audio, guidance_scale)
        temperature = jnp.where(audio, settings.audio_temperature, settings.text_temperature)
        top_k = jnp.where(audio, settings.audio_top_k, settings.text_top_k)
        keys = jax.vmap(lambda k: jax.random.split(jax.random.fold_in(k, c.slot)))(row_keys)
        stream0 = sample(logits0, rules.stream0_allowed(c.state), temperature, top_k, keys[:, 0], max_top_k)
        allowed, zero = rules.rest_allowed(c.state)
        codes = sample(rest, allowed, temperature, top_k, keys[:, 1], max_top_k)
        frame = jnp.concatenate([stream0[:, None], jnp.where(zero[:, None], 0, codes + pads)], axis=1)
        live = c.state.phase != DONE
        frame = jnp.where(live[:, None], frame, 0)
        out = jax.lax.dynamic_update_slice_in_dim(c.frames, frame[:, None], c.slot + 1, axis=1)
        if guidance:
            keep = rules.unconditional_keeps(c.state, stream0)
            fed_frame = jnp.concatenate([frame, jnp.where(keep[:, None], frame, 0)])
        else:
            fed_frame = frame
        return _Carry(
            cache, fed_frame, c.slot + 1, rules.advance(c.state, stream0), out, jnp.where(live, c.slot + 2, c.end)
        )

    def running(c: _Carry) -> jax.Array:
        return (c.slot + 1 < slots) & jnp.any(c.state.phase != DONE)

    start = _Carry(
        cache,
        fed.ids[:, -1],
        jnp.int32(prompt_frames - 1),
        RowState.start(rows),
        frames,
        jnp.full((rows,), prompt_frames, jnp.int32),
    )
    final = jax.lax.while_loop(running, body, start)
    return Decoded(final.frames, final.end, final.state.phase == DONE)
