"""Generation: KV-cache decoding equals the full forward; the reference's decoding rules
(both END tokens in every segment, no forced delay pattern, lengths in interleaved frames and
the cut at max_step, the unconditional guidance row) and the switches that restore the stricter
rules; restricted sampling keeps every id in its range; batching does not change answers; the
CLI captions / makes audio after a short demo training run."""

import dataclasses
import json
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf
from flax import nnx
from helpers import DEMO, demo_config, demo_overrides, example_frames, tiny_config

from bagpiper_jax.audio_encoder.pieces import Continuous
from bagpiper_jax.codec.interleave import interleaved_ids
from bagpiper_jax.config import AudioDecoding, GenerateConfig, SegmentDecoding
from bagpiper_jax.generate.decode import Prompts, decode
from bagpiper_jax.generate.output import Segment, audio_codes, split_segments
from bagpiper_jax.generate.rules import (
    AUDIO_PHASE,
    DONE,
    MODALITY,
    NOT_ENDED,
    ROLE,
    TEXT_PHASE,
    DecodeRules,
    RowState,
    modality_plan,
)
from bagpiper_jax.model import Batch, init_model
from bagpiper_jax.model.kv_cache import KVCache
from bagpiper_jax.sharding import make_mesh
from bagpiper_jax.vocab import ASSISTANT, AUDIO, BOS, EOS, EOT, TEXT, USER

SLOTS = 96
# Words of a demo caption that name each sound type (bagpiper_jax.data.demo_corpus).
KIND_WORDS = {
    "sine tone": "sine tone",
    "major chord": "major chord",
    "chirp": "chirp",
    "noise burst": "white noise",
    "silence": "silence",
}
# The reference's rules with short segments: text ends from step 1, cut at 6; audio (8 streams)
# ends from step 10, cut at 14. Greedy.
SMALL = GenerateConfig(
    text=SegmentDecoding(temperature=0.0, max_step=6),
    audio=AudioDecoding(temperature=0.0, min_step=10, max_step=14),
    max_segments=3,
    max_new_frames=64,
)
# Every switch on: the rules before issue 22 (delay pattern, planned END tokens, END at max_step,
# the unconditional row that sees the audio segments).
STRICT = dataclasses.replace(
    SMALL,
    strict_delay_pattern=True,
    planned_end_tokens=True,
    end_at_max_step=True,
    unconditional_row="audio_segments",
)


def new_model(seed: int = 0):
    cfg = tiny_config("runtime.remat=none")
    graphdef, params, _ = init_model(cfg.model, cfg.runtime, make_mesh(cfg.mesh, jax.devices()[:1]), (), seed)
    return nnx.merge(graphdef, params)


@pytest.fixture(scope="module")
def model():
    return new_model()


@pytest.fixture(scope="module")
def flat():
    """A model whose final norm is zero: every stream-0 logit is 0 and stream n's are
    ``stream_emb[n] @ head``, so greedy decoding takes the lowest allowed id of stream 0 and
    of every stream whose embedding is 0. Stream 3 is made to prefer its code 5."""
    m = new_model()
    m.final_norm.scale[...] = 0.0
    head = np.zeros(m.lm_head.shape, np.float32)
    head[0, m.vocab.audio_pad(3) + 1 + 5] = 1.0
    m.lm_head[...] = jnp.asarray(head)
    emb = np.zeros(m.stream_emb.shape, np.float32)
    emb[3, 0] = 1.0
    m.stream_emb[...] = jnp.asarray(emb)
    return m


def prompt(vocab, rng, n_text: int, n_cont: int, dim: int):
    """``bos user audio [n_cont continuous] eot user text [n_text] eos assistant``: frames and
    features with the frames they replace."""
    ids = [[BOS], [USER], [AUDIO]] + [[0]] * n_cont + [[EOT], [USER], [TEXT]]
    ids += [[int(vocab.text_ids(t))] for t in rng.integers(0, vocab.text_size, n_text)] + [[EOS], [ASSISTANT]]
    frames = np.zeros((len(ids), vocab.num_streams), np.int32)
    frames[:, 0] = np.asarray(ids)[:, 0]
    return frames, rng.normal(size=(n_cont, dim)).astype(np.float32), 3 + np.arange(n_cont)


def left_padded(items, length: int = 0, continuous_slots: int = 8) -> Prompts:
    """Prompts from ``(frames, features, feature frames)`` items, left-padded to the longest
    (or to ``length``)."""
    length = max([length] + [len(f) for f, _, _ in items])
    streams, dim = items[0][0].shape[1], items[0][1].shape[1]
    ids = np.zeros((len(items), length, streams), np.int32)
    cont = np.zeros((len(items), continuous_slots, dim), np.float32)
    cont_frames = np.full((len(items), continuous_slots), -1, np.int32)
    first = np.zeros(len(items), np.int32)
    for r, (f, feats, where) in enumerate(items):
        first[r] = length - len(f)
        ids[r, first[r] :] = f
        cont[r, : len(feats)], cont_frames[r, : len(where)] = feats, where + first[r]
    return Prompts(jnp.asarray(ids), jnp.asarray(first), Continuous(jnp.asarray(cont), jnp.asarray(cont_frames)))


def run(model, prompts, settings=SMALL, plan=(), guidance=False, seed=0):
    graphdef, params = nnx.split(model)
    rules = DecodeRules(model.vocab, settings, modality_plan(plan))
    out = decode(graphdef, params, prompts, jax.random.key(seed), rules=rules, slots=SLOTS, guidance=guidance)
    return jax.tree.map(np.asarray, out)


@pytest.fixture(scope="module")
def prompts(model):
    rng = np.random.default_rng(1)
    dim = model.cfg.continuous_dim
    return [
        prompt(model.vocab, rng, 4, 5, dim),
        prompt(model.vocab, rng, 1, 3, dim),
        prompt(model.vocab, rng, 6, 0, dim),
    ]


def full_logits(model, frames, first, end, continuous=None):
    """Uncached logits of whole rows (left padding as segment 0): stream 0 ``[rows, slots,
    vocab]`` and streams >= 1 over the audio range ``[rows, slots, streams-1, audio]``."""
    slots = np.arange(frames.shape[1])[None]
    batch = Batch(
        jnp.asarray(frames),
        jnp.asarray((slots >= first[:, None]) & (slots < end[:, None]), jnp.int32),
        jnp.asarray(np.maximum(slots - first[:, None], 0)),
        None,
    )

    @jax.jit
    def logits(params):
        m = nnx.merge(graphdef, params)
        return m.stream_logits(m.hidden_states(batch, continuous))

    graphdef, params = nnx.split(model)
    return jax.tree.map(np.asarray, logits(params))


def own_blocks(model, frames, first, end, continuous=None):
    """:func:`full_logits` with streams >= 1 restricted to each one's own block
    ``[rows, slots, streams-1, block]``."""
    logits0, rest = full_logits(model, frames, first, end, continuous)
    streams, block = model.vocab.num_streams, model.vocab.stream_block
    return logits0, rest.reshape(*rest.shape[:3], streams, block)[:, :, np.arange(streams - 1), np.arange(1, streams)]


def test_cached_decoding_equals_full_forward_at_every_step(model, prompts):
    """Teacher-forced: a multi-stream sequence (user audio as continuous input, text, an
    interleaved audio answer) fed frame by frame through the cache gives the logits of one
    uncached forward over the whole sequence, for left-padded rows of different lengths."""
    vocab, cfg = model.vocab, model.cfg
    rng = np.random.default_rng(0)
    seqs, feats, where = [], [], []
    for n_text, n_codes, n_cont in ((3, 4, 5), (1, 2, 3)):
        ids, _, cont = example_frames(vocab, rng, n_text, n_codes, n_cont)
        seqs.append(ids), feats.append(rng.normal(size=(len(cont), cfg.continuous_dim)).astype(np.float32))
        where.append(cont)
    ps = left_padded(list(zip(seqs, feats, where)))
    frames = np.asarray(ps.ids)
    first, length = np.asarray(ps.first), frames.shape[1]
    want0, want_rest = full_logits(model, frames, first, np.full(2, length), ps.continuous)
    graphdef, params = nnx.split(model)

    @jax.jit
    def extend(params, ids, cache, start, continuous=None):
        m = nnx.merge(graphdef, params)
        hidden, cache = m.extend(ids, ps.first, cache, start, continuous)
        return m.stream_logits(hidden), cache

    prefill = 12  # both rows' continuous frames lie inside the prefill
    assert np.asarray(ps.continuous.frames).max() < prefill
    cache = KVCache.zeros(cfg.layers, 2, length + 3, cfg.kv_heads, cfg.head_dim, jnp.float32)
    (got0, got_rest), cache = extend(params, ps.ids[:, :prefill], cache, jnp.int32(0), ps.continuous)
    errors = []
    for r in range(2):  # real (non-padding) prefill frames
        errors.append(np.abs(np.asarray(got0)[r, first[r] :] - want0[r, first[r] : prefill]).max())
        errors.append(np.abs(np.asarray(got_rest)[r, first[r] :] - want_rest[r, first[r] : prefill]).max())
    for t in range(prefill, length):
        (got0, got_rest), cache = extend(params, ps.ids[:, t : t + 1], cache, jnp.int32(t))
        errors.append(np.abs(np.asarray(got0)[:, 0] - want0[:, t]).max())
        errors.append(np.abs(np.asarray(got_rest)[:, 0] - want_rest[:, t]).max())
    assert max(errors) <= 1e-4, max(errors)


def replay(rules, out, prompt_frames):
    """The row state before each decided frame, by the slot fed with it, and the frames as
    decode feeds them: the last frame of a segment cut at max_step with streams 1.. zeroed."""
    fed, states = out.frames.copy(), {}
    state = RowState.start(len(out.end))
    for slot in range(prompt_frames - 1, int(out.end.max()) - 1):
        states[slot] = state
        stream0 = jnp.asarray(out.frames[:, slot + 1, 0])
        fed[np.asarray(rules.cut(state, stream0)), slot + 1, 1:] = 0
        state = rules.advance(state, stream0)
    return states, fed


def greedy_frames(rules, state, logits0, own):
    """The frames greedy decoding takes from ``logits0 [rows, vocab]`` and each stream's
    block logits ``own [rows, streams-1, block]`` (ids 0 on streams 1.. outside audio content)."""
    stream0 = np.where(np.asarray(rules.stream0_allowed(state)), logits0, -np.inf).argmax(-1)
    blocks = np.where(np.asarray(rules.rest_allowed(state)), own, -np.inf).argmax(-1)
    content = (np.asarray(state.phase) == AUDIO_PHASE) & ~np.isin(stream0, (EOS, EOT))
    rest = np.where(content[:, None], blocks + rules.vocab.audio_pads[1:], 0)
    return np.concatenate([stream0[:, None], rest], axis=1)


def check_greedy(model, rules, out, ps, unconditional=None):
    """Every decoded frame of the jitted loop is the restricted argmax of uncached forwards over
    the final sequence. ``unconditional(slot, row, segment)``: the unconditional logits
    ``(stream 0 [vocab], blocks [streams-1, block])`` a guided row combines with at ``slot``.
    Returns the replayed states, the fed frames and the number of guided steps."""
    states, fed = replay(rules, out, ps.ids.shape[1])
    logits0, own = own_blocks(model, fed, np.asarray(ps.first), out.end, ps.continuous)
    guided_steps = 0
    for slot, state in states.items():
        l0, lo = logits0[:, slot].copy(), own[:, slot].copy()
        if unconditional is not None:
            guided, scale = map(np.asarray, rules.guidance(state))
            for r in np.flatnonzero(guided):
                u0, uo = unconditional(slot, r, int(state.segment[r]))
                l0[r] = scale[r] * l0[r] + (1 - scale[r]) * u0
                lo[r] = scale[r] * lo[r] + (1 - scale[r]) * uo
                guided_steps += 1
        live = np.asarray(state.phase) != DONE
        want = greedy_frames(rules, state, l0, lo)
        np.testing.assert_array_equal(out.frames[live, slot + 1], want[live], err_msg=f"slot {slot + 1}")
    return states, fed, guided_steps


@pytest.fixture(scope="module")
def greedy(model, prompts):
    """Greedy decoding (no guidance) of three prompts in one batch, text then audio enforced:
    segments cut at max_step are followed by the next one."""
    ps = left_padded(prompts)
    return ps, run(model, ps, SMALL, ("text", "audio"))


def test_greedy_decoding_picks_the_allowed_argmax_of_the_full_forward(model, greedy):
    """Every decoded frame of the jitted loop is the restricted argmax of the uncached forward
    over the final sequence (the loop's cache, masks and bookkeeping agree), with the
    reference's rules: free audio streams, END tokens from min_step, the cut at max_step."""
    ps, out = greedy
    rules = DecodeRules(model.vocab, SMALL, modality_plan(("text", "audio")))
    check_greedy(model, rules, out, ps)
    assert out.finished.all()
    for r in range(len(out.end)):
        segments = split_segments(out.frames[r], ps.ids.shape[1], int(out.end[r]))
        assert [g.modality for g in segments[:2]] == ["text", "audio"] and len(segments) <= SMALL.max_segments
        check_ranges(model.vocab, SMALL, segments)


def test_batched_prompts_equal_one_at_a_time(model, prompts, greedy):
    ps, batched = greedy
    first, length = np.asarray(ps.first), ps.ids.shape[1]
    for r, item in enumerate(prompts):
        alone = run(model, left_padded([item], length + 2), SMALL, ("text", "audio"))  # more padding
        shift = length + 2 - len(item[0])
        np.testing.assert_array_equal(
            batched.frames[r, first[r] : batched.end[r]], alone.frames[0, shift : alone.end[0]]
        )


def unconditional_of_segments(model, fed, states, ps, out):
    """The reference's unconditional rows: for a guided segment, pad (id 0) at every slot up
    to and including its ``<|assistant|>`` frame (the prompt and every earlier segment), then
    the frames fed since (modality token, content)."""
    rows = fed.shape[0]
    assistant = np.full((rows, SMALL.max_segments), -1)
    for slot, state in states.items():
        at = np.asarray(state.phase) == MODALITY
        assistant[at, np.asarray(state.segment)[at]] = slot
    per_segment = []
    for k in range(SMALL.max_segments):
        history = np.arange(fed.shape[1])[None, :, None] <= assistant[:, k, None, None]
        per_segment.append(own_blocks(model, np.where(history, 0, fed), np.asarray(ps.first), out.end))
    return lambda slot, r, segment: (per_segment[segment][0][r, slot], per_segment[segment][1][r, slot])


def test_guidance_row_is_pad_through_assistant_and_holds_no_earlier_segment(model, prompts):
    """Guided greedy decoding of audio, text, audio: every guided frame is the masked argmax of
    3 * cond - 2 * uncond, where the unconditional row is pad through this segment's
    ``<|assistant|>`` — the whole prompt, and for the second audio segment also the first
    one, which the cache of that row held until the segment started."""
    ps = left_padded(prompts)
    plan = ("audio", "text", "audio")
    out = run(model, ps, SMALL, plan, guidance=True)
    rules = DecodeRules(model.vocab, SMALL, modality_plan(plan))
    states, fed = replay(rules, out, ps.ids.shape[1])
    _, _, guided = check_greedy(model, rules, out, ps, unconditional_of_segments(model, fed, states, ps, out))
    assert out.finished.all() and guided > 0
    for r in range(len(out.end)):
        segments = split_segments(out.frames[r], ps.ids.shape[1], int(out.end[r]))
        assert [g.modality for g in segments] == list(plan)


def test_audio_segments_guidance_row_restores_the_previous_one(model, prompts):
    """``unconditional_row: audio_segments``: the unconditional row is a pad prompt ending in
    ``<|assistant|>`` (the first segment is audio) that sees every audio segment's frames —
    role, modality, content and END — and pad for everything else, with no rebuild."""
    ps = left_padded(prompts)
    plan = ("audio", "text", "audio")
    settings = dataclasses.replace(SMALL, unconditional_row="audio_segments")
    out = run(model, ps, settings, plan, guidance=True)
    rules = DecodeRules(model.vocab, settings, modality_plan(plan))
    states, fed = replay(rules, out, ps.ids.shape[1])
    prompt_frames = ps.ids.shape[1]
    seen = np.zeros_like(fed)
    seen[:, prompt_frames - 1, 0] = ASSISTANT
    for slot, state in states.items():
        phase, decided = np.asarray(state.phase), fed[:, slot + 1]
        following = fed[:, min(slot + 2, SLOTS - 1), 0]
        audio = (
            (phase == AUDIO_PHASE)
            | ((phase == MODALITY) & (decided[:, 0] == AUDIO))
            | ((phase == ROLE) & (following == AUDIO))
        )
        seen[audio, slot + 1] = decided[audio]
    u0, uo = own_blocks(model, seen, np.asarray(ps.first), out.end)
    _, _, guided = check_greedy(model, rules, out, ps, lambda slot, r, _: (u0[r, slot], uo[r, slot]))
    assert guided > 0 and out.finished.all()


@pytest.fixture(scope="module")
def sampled(model, prompts):
    """Hot sampling (temperature 1.5, top-k 5 on audio, none on text) of caption, audio,
    audio with the reference's rules and guidance."""
    settings = dataclasses.replace(
        SMALL,
        text=SegmentDecoding(temperature=1.5, top_k=0, max_step=6),
        audio=AudioDecoding(temperature=1.5, top_k=5, min_step=10, max_step=14),
    )
    ps = left_padded(prompts * 2)
    return ps, settings, run(model, ps, settings, ("text", "audio", "audio"), guidance=True, seed=3)


def check_ranges(vocab, settings, segments):
    """Every id lies in its stream's range; lengths obey min/max_step; audio de-interleaves by
    the reference's rule to codes of the codebook."""
    for seg in segments:
        ids, limits = seg.ids, getattr(settings, seg.modality)
        if seg.end in ("eos", "eot"):
            assert limits.min_step <= len(ids) <= limits.max_step - 1
        else:
            assert seg.end == "max" and len(ids) == limits.max_step
        if seg.modality == "text":
            assert ((ids[:, 0] >= vocab.text_offset) & (ids[:, 0] < vocab.audio_offset)).all()
            assert (ids[:, 1:] == 0).all()
            continue
        for n in range(vocab.num_streams):
            start, end = vocab.stream_range(n)
            assert ((ids[:, n] >= start) & (ids[:, n] < end)).all()
        codes = audio_codes(seg, vocab)
        assert codes.shape == (len(ids) - vocab.num_streams + 1, vocab.num_streams)
        assert codes.min() >= 0 and codes.max() < vocab.codebook_size


def test_sampled_ids_stay_in_their_ranges_and_audio_deinterleaves(model, sampled):
    ps, settings, out = sampled
    for r in range(len(out.end)):
        segments = split_segments(out.frames[r], ps.ids.shape[1], int(out.end[r]), bool(out.finished[r]))
        assert [g.modality for g in segments[:3]] == ["text", "audio", "audio"]
        check_ranges(model.vocab, settings, segments)
        assert (out.frames[r, out.end[r] :] == 0).all()
    assert not (out.frames[:3] == out.frames[3:]).all()  # repeated prompts draw different samples


def test_guidance_scale_one_equals_no_guidance(model, sampled):
    ps, settings, guided = sampled
    plan = ("text", "audio", "audio")
    one = dataclasses.replace(settings, audio=dataclasses.replace(settings.audio, guidance_scale=1.0))
    plain = run(model, ps, one, plan, seed=3)  # no unconditional rows: the scale is never read
    np.testing.assert_array_equal(run(model, ps, one, plan, guidance=True, seed=3).frames, plain.frames)
    assert not (plain.frames == guided.frames).all()  # scale 3 does guide


def check_strict_answer(vocab, settings, frames, start, end, plan):
    """The rules before issue 22, checked independently: the planned segments, <|eot|> between
    them and <|eos|> at the end, text within (0, max_step), and audio blocks that follow the
    delay pattern exactly, their END frame within [min_step, max_step)."""
    segments = split_segments(frames, start, end)
    s = vocab.num_streams
    assert [seg.modality for seg in segments] == list(plan)
    assert [seg.end for seg in segments] == ["eot"] * (len(plan) - 1) + ["eos"]
    for seg in segments:
        ids, limits = seg.ids, getattr(settings, seg.modality)
        if seg.modality == "text":
            assert 1 <= len(ids) <= limits.max_step - 1
            assert ((ids[:, 0] >= vocab.text_offset) & (ids[:, 0] < vocab.audio_offset)).all()
            assert (ids[:, 1:] == 0).all()
            continue
        frames_n = len(ids) - s + 1
        assert limits.min_step <= len(ids) <= limits.max_step - 1 and frames_n >= 0
        for n in range(s):
            start_n, end_n = vocab.stream_range(n)
            inside = np.arange(len(ids)) - n
            is_code = (inside >= 0) & (inside < frames_n)
            assert ((ids[:, n] > start_n) & (ids[:, n] < end_n) == is_code).all()
            assert (ids[~is_code, n] == start_n).all()


def test_switches_restore_the_strict_rules(model, prompts):
    """strict_delay_pattern + planned_end_tokens + end_at_max_step (+ the audio_segments
    guidance row): hot sampling gives exactly the planned segments, delay-patterned audio and
    END tokens where the plan puts them."""
    settings = dataclasses.replace(
        STRICT,
        text=SegmentDecoding(temperature=1.5, top_k=0, max_step=6),
        audio=AudioDecoding(temperature=1.5, top_k=5, min_step=10, max_step=14),
    )
    ps = left_padded(prompts * 2)
    plan = ("text", "audio", "audio")
    out = run(model, ps, settings, plan, guidance=True, seed=3)
    assert out.finished.all()
    for r in range(len(out.end)):
        check_strict_answer(model.vocab, settings, out.frames[r], ps.ids.shape[1], int(out.end[r]), plan)


def stream0_choices(rules, phase, segment=0, step=0, audio_end=NOT_ENDED):
    row = lambda x: jnp.asarray([x], jnp.int32)
    state = RowState(row(phase), row(segment), row(step), row(audio_end))
    return np.flatnonzero(np.asarray(rules.stream0_allowed(state))[0])


def test_reference_rules_per_phase(model):
    vocab = model.vocab
    rules = DecodeRules(vocab, SMALL, modality_plan(("text", "audio")))
    allowed = lambda *a, **k: stream0_choices(rules, *a, **k)
    assert list(allowed(MODALITY)) == [TEXT] and list(allowed(MODALITY, segment=1)) == [AUDIO]
    assert list(allowed(MODALITY, segment=2)) == [TEXT, AUDIO]  # past the enforced list: free
    assert EOS not in allowed(TEXT_PHASE, step=0) and EOT not in allowed(TEXT_PHASE, step=0)
    text = allowed(TEXT_PHASE, step=1)  # both END tokens, in every segment
    assert EOT in text and EOS in text and len(text) == vocab.text_size + 2
    assert len(allowed(TEXT_PHASE, segment=1, step=5)) == vocab.text_size + 2  # no END forced at max_step
    block0 = set(range(*vocab.stream_range(0)))
    assert set(allowed(AUDIO_PHASE, segment=1, step=0)) == block0  # its pad at any step
    assert set(allowed(AUDIO_PHASE, segment=1, step=SMALL.audio.min_step)) == block0 | {EOS, EOT}
    assert list(allowed(ROLE)) == [ASSISTANT]
    state = RowState(*(jnp.asarray([x], jnp.int32) for x in (AUDIO_PHASE, 1, 0, NOT_ENDED)))
    assert np.asarray(rules.rest_allowed(state)).all()  # every stream: its whole block, pad included


@pytest.mark.parametrize(
    "plan, phase, segment, step, token, after",
    [
        (("text", "audio"), TEXT_PHASE, 0, 2, EOS, ROLE),  # <|eos|> with an enforced modality left
        (("text", "audio"), AUDIO_PHASE, 1, 11, EOS, DONE),  # <|eos|>, nothing enforced left
        (("text", "audio"), AUDIO_PHASE, 1, 11, EOT, ROLE),  # <|eot|>: another (free) segment
        ((), TEXT_PHASE, 2, 1, EOT, DONE),  # <|eot|> in the last of max_segments
        (("text", "audio"), TEXT_PHASE, 0, 5, "text", ROLE),  # cut at max_step, enforced left
        ((), TEXT_PHASE, 0, 5, "text", DONE),  # cut at max_step, nothing enforced
        ((), TEXT_PHASE, 0, 4, "text", TEXT_PHASE),
    ],
)
def test_reference_rules_after_a_segment(model, plan, phase, segment, step, token, after):
    rules = DecodeRules(model.vocab, SMALL, modality_plan(plan))
    token = model.vocab.text_offset if token == "text" else token
    state = RowState(*(jnp.asarray([x], jnp.int32) for x in (phase, segment, step, NOT_ENDED)))
    new = rules.advance(state, jnp.asarray([token], jnp.int32))
    assert int(new.phase[0]) == after
    assert int(new.segment[0]) == segment + (after != phase)


def test_strict_rules_per_phase(model):
    """The switches: <|eot|> where the plan continues, <|eos|> where it ends, END forced at
    max_step - 1; stream 0's pad (ending the codes) from min_step - 7 on and forced at
    max_step - 8, the END frame 7 steps after it."""
    vocab = model.vocab
    rules = DecodeRules(vocab, STRICT, modality_plan(("text", "audio")))
    allowed = lambda *a, **k: stream0_choices(rules, *a, **k)
    text = allowed(TEXT_PHASE, step=2)
    assert EOT in text and EOS not in text and len(text) == vocab.text_size + 1
    assert list(allowed(TEXT_PHASE, step=STRICT.text.max_step - 1)) == [EOT]
    assert list(allowed(TEXT_PHASE, segment=1, step=STRICT.text.max_step - 1)) == [EOS]
    pad0 = vocab.audio_pad(0)
    assert pad0 not in allowed(AUDIO_PHASE, segment=1, step=2) and pad0 in allowed(AUDIO_PHASE, segment=1, step=3)
    assert list(allowed(AUDIO_PHASE, segment=1, step=6)) == [pad0]
    assert list(allowed(AUDIO_PHASE, segment=1, step=5, audio_end=4)) == [pad0]
    assert list(allowed(AUDIO_PHASE, segment=1, step=4 + vocab.num_streams - 1, audio_end=4)) == [EOS]
    free = DecodeRules(vocab, STRICT)  # no plan: free END tokens, <|eos|> only in the last segment
    assert {EOS, EOT} <= set(stream0_choices(free, TEXT_PHASE, segment=0, step=2))
    last = stream0_choices(free, TEXT_PHASE, segment=STRICT.max_segments - 1, step=2)
    assert EOS in last and EOT not in last


def flat_prompts(flat):
    rng = np.random.default_rng(2)
    return left_padded([prompt(flat.vocab, rng, 3, 2, flat.cfg.continuous_dim)])


@pytest.mark.parametrize("planned_end_tokens", [False, True])
def test_a_free_answer_can_end_after_one_segment(flat, planned_end_tokens):
    """No enforced modality: the flat model picks <|text|>, one text token, then the lowest END
    id, <|eos|>, and stops — also with planned END tokens (the plan length is not
    max_segments)."""
    ps = flat_prompts(flat)
    settings = dataclasses.replace(SMALL, planned_end_tokens=planned_end_tokens)
    out = run(flat, ps, settings)
    start = ps.ids.shape[1]
    assert out.finished.all() and out.end[0] == start + 3
    np.testing.assert_array_equal(out.frames[0, start : start + 3, 0], [TEXT, flat.vocab.text_offset, EOS])
    assert [g.end for g in split_segments(out.frames[0], start, int(out.end[0]))] == ["eos"]


def test_audio_streams_take_any_id_and_segments_are_cut_at_max_step(flat):
    """The flat model with audio then text enforced, END tokens only from step 10 and text cut
    at step 4: every stream but 3 holds its pad at every audio step (no delay pattern), stream 3
    its code 5 from the first step; <|eos|> at step 10 (an enforced segment is left), then a
    text segment of exactly 4 frames with no END token, and the answer stops."""
    vocab = flat.vocab
    ps = flat_prompts(flat)
    settings = dataclasses.replace(SMALL, text=SegmentDecoding(temperature=0.0, min_step=10, max_step=4))
    out = run(flat, ps, settings, ("audio", "text"))
    start = ps.ids.shape[1]
    audio, text = split_segments(out.frames[0], start, int(out.end[0]))
    assert (audio.end, text.end) == ("eos", "max") and out.finished.all()
    expected = np.tile(vocab.audio_pads, (settings.audio.min_step, 1))
    expected[:, 3] += 1 + 5
    np.testing.assert_array_equal(audio.ids, expected)
    assert int(out.frames[0, start + 1 + len(audio.ids) + 1, 0]) == ASSISTANT
    np.testing.assert_array_equal(text.ids[:, 0], [vocab.text_offset] * 4)
    assert out.end[0] == start + 1 + 10 + 1 + 1 + 1 + 4  # modality, audio, eos, assistant, modality, text
    # The reference's de-interleave: T = 10 - 8 + 1 frames, stream n read at [n : n + T]; pads read as 0.
    codes = np.zeros((3, vocab.num_streams), np.int32)
    codes[:, 3] = 5
    np.testing.assert_array_equal(audio_codes(audio, vocab), codes)


def test_strict_switches_on_the_flat_model(flat):
    """The same prompt under the switches: stream 0 codes until its pad may come (step 3), every
    stream delayed by its index, the END frame 7 steps after the codes end; the text segment
    ends with <|eos|> at max_step - 1 (no cut)."""
    vocab = flat.vocab
    ps = flat_prompts(flat)
    settings = dataclasses.replace(
        SMALL,
        text=SegmentDecoding(temperature=0.0, min_step=10, max_step=4),
        strict_delay_pattern=True,
        planned_end_tokens=True,
        end_at_max_step=True,
    )
    out = run(flat, ps, settings, ("audio", "text"))
    start = ps.ids.shape[1]
    audio, text = split_segments(out.frames[0], start, int(out.end[0]))
    assert (audio.end, text.end) == ("eot", "eos") and len(text.ids) == 3
    codes = np.zeros((3, vocab.num_streams), np.int32)  # the lowest code everywhere, stream 3 its code 5
    codes[:, 3] = 5
    np.testing.assert_array_equal(audio.ids, interleaved_ids(codes, vocab))
    np.testing.assert_array_equal(audio_codes(audio, vocab), codes)


@pytest.mark.slow
def test_cli_after_demo_training(demo_root, tmp_path):
    """Short demo training, then ``bagpiper-generate`` captions a held-out clip (with an
    answer) and makes audio for a held-out caption; reports how often captions of the
    held-out clips name the right sound type."""
    from bagpiper_jax.generate import Generator
    from bagpiper_jax.train.trainer import train

    run_dir = tmp_path / "run"
    overrides = [
        f"run_dir={run_dir}",
        "train.steps=60",
        "train.warmup_steps=5",
        "train.decay_steps=60",
        "train.eval_every=60",
        "train.checkpoint_every=60",
        "train.log_every=10",
    ]
    cfg = demo_config(demo_root, *overrides)
    train(cfg, progress=False)
    heldout = [json.loads(x) for x in (demo_root / "demo" / "corpus" / "heldout.jsonl").read_text().splitlines()]
    clips = [(ex["sound"]["kind"], str(demo_root / "demo" / "corpus" / f"wav/{ex['id']}.wav")) for ex in heldout]
    caption = next(ex.get("text1") for ex in heldout if ex.get("text1"))
    out_wav = tmp_path / "out.wav"
    gen = ["generate.max_new_frames=192", "generate.audio.max_step=100"]
    cmd = [
        "bagpiper-generate",
        "--checkpoint",
        str(run_dir),
        "--config",
        str(DEMO),
        "--audio",
        clips[0][1],
        "--question",
        "What kind of sound is this?",
        "--text",
        caption,
        "--out",
        str(out_wav),
        "--devices",
        "1",
        *demo_overrides(demo_root),
        *overrides,
        *gen,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["understanding"]["caption"][0] and "answer" in result["understanding"]
    assert result["generation"]["out"] == [str(out_wav)] and result["timing"]["frames_per_s"] > 0
    wav, rate = sf.read(out_wav)
    assert rate == 16_000 and wav.ndim == 1 and len(wav) == 320 * round(len(wav) / 320)
    # Accuracy of the sound type in captions of the held-out clips (reported, not asserted high).
    generator = Generator.from_checkpoint(run_dir, demo_config(demo_root, *overrides, *gen))
    answers = generator.generate([[("user", "audio", path)] for _, path in clips], ("text",)).answers
    named = [next((k for k, word in KIND_WORDS.items() if word in a[0].texts()[0]), None) for a in answers]
    accuracy = np.mean([n == kind for n, (kind, _) in zip(named, clips)])
    print(f"demo caption sound-type accuracy after 60 steps: {accuracy:.2f} on {len(clips)} held-out clips")
    assert all(a[0].texts()[0] for a in answers)


def test_audio_segments_deinterleave_by_the_reference_rule(model):
    vocab = model.vocab
    codes = np.random.default_rng(0).integers(0, vocab.codebook_size, (9, vocab.num_streams))
    block = interleaved_ids(codes, vocab)
    np.testing.assert_array_equal(audio_codes(Segment("audio", block, "eos"), vocab), codes)
    np.testing.assert_array_equal(audio_codes(Segment("audio", block[:-3], ""), vocab), codes[:-3])  # cut off
    assert audio_codes(Segment("audio", block[:7], ""), vocab).shape == (0, vocab.num_streams)
    padded = block.copy()
    padded[5, 2] = vocab.audio_pad(2)  # a pad inside stream 2's window (frame 3 of it) reads as code 0
    want = codes.copy()
    want[3, 2] = 0
    np.testing.assert_array_equal(audio_codes(Segment("audio", padded, "eos"), vocab), want)


def test_segments_split_at_end_tokens_and_cuts():
    """END tokens, and a cut segment followed directly by the next <|assistant|>."""
    text = [[TEXT], [20], [21], [EOT], [ASSISTANT], [TEXT], [22], [ASSISTANT], [AUDIO], [30], [EOS]]
    frames = np.zeros((20, 2), np.int32)
    frames[5 : 5 + len(text), 0] = np.asarray(text)[:, 0]
    segments = split_segments(frames, 5, 5 + len(text))
    assert [(g.modality, g.end, list(g.ids[:, 0])) for g in segments] == [
        ("text", "eot", [20, 21]),
        ("text", "max", [22]),
        ("audio", "eos", [30]),
    ]
    assert split_segments(frames, 5, 8, finished=False)[0].end == ""  # the cache filled
    assert split_segments(frames, 5, 8)[0].end == "max"
