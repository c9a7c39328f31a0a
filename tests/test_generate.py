"""Generation: KV-cache decoding equals the full forward, restricted sampling keeps every id
in its range, CFG at scale 1 is a no-op, batching does not change answers, and the CLI
captions / makes audio after a short demo training run."""

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
from bagpiper_jax.config import GenerateConfig
from bagpiper_jax.generate.decode import Prompts, decode
from bagpiper_jax.generate.output import Segment, audio_codes, split_segments
from bagpiper_jax.generate.rules import NOT_ENDED, DecodeRules, RowState, modality_plan
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
SMALL = GenerateConfig(max_text_frames=5, min_audio_frames=2, max_audio_frames=6, max_segments=3, max_new_frames=64)


@pytest.fixture(scope="module")
def model():
    cfg = tiny_config("runtime.remat=none")
    graphdef, params, _ = init_model(cfg.model, cfg.runtime, make_mesh(cfg.mesh, jax.devices()[:1]), ())
    return nnx.merge(graphdef, params)


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


def run(model, prompts, settings=SMALL, plan=(), guidance_scale=None, seed=0):
    graphdef, params = nnx.split(model)
    rules = DecodeRules(model.vocab, settings, modality_plan(plan))
    scale = None if guidance_scale is None else jnp.float32(guidance_scale)
    out = decode(graphdef, params, prompts, jax.random.key(seed), scale, rules=rules, slots=SLOTS)
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


def full_logits(model, frames, first, end, prompts):
    """Uncached logits of the whole decoded rows (left padding as segment 0)."""
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
        return m.stream_logits(m.hidden_states(batch, prompts.continuous))

    graphdef, params = nnx.split(model)
    return jax.tree.map(np.asarray, logits(params))


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
    want0, want_rest = full_logits(model, frames, first, np.full(2, length), ps)
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


@pytest.fixture(scope="module")
def greedy(model, prompts):
    """Greedy decoding (no CFG) of three prompts in one batch."""
    cfg = dataclasses.replace(SMALL, audio_temperature=0.0)
    ps = left_padded(prompts)
    return ps, cfg, run(model, ps, cfg)


def test_greedy_decoding_picks_the_allowed_argmax_of_the_full_forward(model, greedy):
    """Every decoded frame of the jitted loop is the restricted argmax of the uncached
    forward over the final sequence (the loop's cache, masks and bookkeeping agree)."""
    ps, cfg, out = greedy
    rules = DecodeRules(model.vocab, cfg)
    first, prompt_frames = np.asarray(ps.first), ps.ids.shape[1]
    logits0, rest = full_logits(model, out.frames, first, out.end, ps)
    streams, block = model.vocab.num_streams, model.vocab.stream_block
    own = rest.reshape(*rest.shape[:3], streams, block)[:, :, np.arange(streams - 1), np.arange(1, streams)]
    pads = np.asarray([model.vocab.audio_pad(n) for n in range(1, streams)])
    state = RowState.start(len(first))
    for slot in range(prompt_frames - 1, out.end.max() - 1):
        live = np.asarray(state.phase) != 4
        want0 = np.where(np.asarray(rules.stream0_allowed(state)), logits0[:, slot], -np.inf).argmax(-1)
        allowed, zero = map(np.asarray, rules.rest_allowed(state))
        want_rest = np.where(zero[:, None], 0, np.where(allowed, own[:, slot], -np.inf).argmax(-1) + pads)
        np.testing.assert_array_equal(out.frames[live, slot + 1, 0], want0[live], err_msg=f"slot {slot + 1}")
        np.testing.assert_array_equal(out.frames[live, slot + 1, 1:], want_rest[live], err_msg=f"slot {slot + 1}")
        state = rules.advance(state, jnp.asarray(out.frames[:, slot + 1, 0]))
    assert out.finished.all()
    for r in range(len(first)):  # no plan: the model chose the modalities and where to stop
        segments = split_segments(out.frames[r], prompt_frames, int(out.end[r]))
        assert 1 <= len(segments) <= cfg.max_segments
        check_answer(model.vocab, cfg, out.frames[r], prompt_frames, int(out.end[r]), [g.modality for g in segments])


def test_batched_prompts_equal_one_at_a_time(model, prompts, greedy):
    ps, cfg, batched = greedy
    first, length = np.asarray(ps.first), ps.ids.shape[1]
    for r, item in enumerate(prompts):
        alone = run(model, left_padded([item], length + 2), cfg)  # more padding, same compiled shape
        shift = length + 2 - len(item[0])
        np.testing.assert_array_equal(
            batched.frames[r, first[r] : batched.end[r]], alone.frames[0, shift : alone.end[0]]
        )


def check_answer(vocab, cfg, frames, start, end, plan):
    """Independent check of one answer's ids: ranges, interleave structure, lengths, ends."""
    segments = split_segments(frames, start, end)
    s = vocab.num_streams
    assert len(segments) == len(plan) and [seg.modality for seg in segments] == list(plan)
    assert [seg.end for seg in segments] == ["eot"] * (len(plan) - 1) + ["eos"]
    for seg in segments:
        ids = seg.ids
        if seg.modality == "text":
            assert 1 <= len(ids) <= cfg.max_text_frames
            assert ((ids[:, 0] >= vocab.text_offset) & (ids[:, 0] < vocab.audio_offset)).all()
            assert (ids[:, 1:] == 0).all()
            continue
        codes = audio_codes(seg, vocab)
        frames_n = len(codes)
        assert cfg.min_audio_frames <= frames_n <= cfg.max_audio_frames and len(ids) == frames_n + s - 1
        for n in range(s):
            start_n, end_n = vocab.stream_range(n)
            inside = np.arange(len(ids)) - n
            is_code = (inside >= 0) & (inside < frames_n)
            assert ((ids[:, n] > start_n) & (ids[:, n] < end_n) == is_code).all()
            assert (ids[~is_code, n] == start_n).all()
        assert codes.shape == (frames_n, s) and codes.min() >= 0 and codes.max() < vocab.codebook_size
    return segments


@pytest.fixture(scope="module")
def sampled(model, prompts):
    """Hot sampling (temperature 1.5, top-k 5 / 0) of a caption-then-audio-then-audio plan."""
    cfg = dataclasses.replace(SMALL, text_temperature=1.5, audio_temperature=1.5, audio_top_k=5)
    ps = left_padded(prompts * 2)
    return ps, cfg, run(model, ps, cfg, ("text", "audio", "audio"), seed=3)


def test_sampled_ids_stay_in_their_ranges_and_audio_deinterleaves(model, sampled):
    ps, cfg, out = sampled
    for r in range(len(out.end)):
        check_answer(model.vocab, cfg, out.frames[r], ps.ids.shape[1], int(out.end[r]), ("text", "audio", "audio"))
        assert (out.frames[r, out.end[r] :] == 0).all()
    assert out.finished.all()
    assert not (out.frames[:3] == out.frames[3:]).all()  # repeated prompts draw different samples


def test_guidance_scale_one_equals_no_guidance(model, prompts, sampled):
    ps, cfg, plain = sampled
    one = run(model, ps, cfg, ("text", "audio", "audio"), guidance_scale=1.0, seed=3)
    np.testing.assert_array_equal(one.frames, plain.frames)
    three = run(model, ps, cfg, ("text", "audio", "audio"), guidance_scale=3.0, seed=3)
    assert not (three.frames == plain.frames).all()
    for r in range(len(three.end)):
        check_answer(model.vocab, cfg, three.frames[r], ps.ids.shape[1], int(three.end[r]), ("text", "audio", "audio"))


def test_rules_restrict_stream0_per_phase(model):
    vocab = model.vocab
    rules = DecodeRules(vocab, SMALL, modality_plan(("text", "audio")))
    ids = np.arange(vocab.size)

    def allowed(phase, segment=0, step=0, audio_end=NOT_ENDED):
        row = lambda x: jnp.asarray([x], jnp.int32)
        return ids[np.asarray(rules.stream0_allowed(RowState(row(phase), row(segment), row(step), row(audio_end))))[0]]

    assert list(allowed(0)) == [TEXT] and list(allowed(0, segment=1)) == [AUDIO]
    text = allowed(1, step=2)
    assert EOT in text and EOS not in text and len(text) == vocab.text_size + 1
    assert EOT not in allowed(1, step=0)
    assert list(allowed(1, step=SMALL.max_text_frames)) == [EOT]
    pad0 = vocab.audio_pad(0)
    assert pad0 not in allowed(2, segment=1, step=1) and pad0 in allowed(2, segment=1, step=2)
    assert list(allowed(2, segment=1, step=SMALL.max_audio_frames)) == [pad0]
    assert list(allowed(2, segment=1, step=5, audio_end=4)) == [pad0]
    assert list(allowed(2, segment=1, step=4 + vocab.num_streams - 1, audio_end=4)) == [EOS]
    assert list(allowed(3)) == [ASSISTANT]


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
    gen = ["generate.max_new_frames=192", "generate.max_audio_frames=100"]
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


def test_audio_segments_deinterleave_to_complete_codec_frames(model):
    vocab = model.vocab
    codes = np.random.default_rng(0).integers(0, vocab.codebook_size, (9, vocab.num_streams))
    block = interleaved_ids(codes, vocab)
    np.testing.assert_array_equal(audio_codes(Segment("audio", block, "eos"), vocab), codes)
    np.testing.assert_array_equal(audio_codes(Segment("audio", block[:-3], ""), vocab), codes[:-3])  # cut off
    assert audio_codes(Segment("audio", block[:4], ""), vocab).shape == (0, vocab.num_streams)
