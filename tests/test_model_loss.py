"""The model's loss and embedding against plain, unchunked references (docs/model.md, Frames and
streams; Loss)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import packed_batch, tiny_config

from bagpiper_jax.audio_encoder.config import output_lengths
from bagpiper_jax.data.records import PreparedExample, PreparedMessage
from bagpiper_jax.data.template import template
from bagpiper_jax.model import Bagpiper
from bagpiper_jax.model.create import init_model
from bagpiper_jax.model.loss import loss_positions, multistream_loss, stream_metrics
from bagpiper_jax.sharding import make_mesh
from bagpiper_jax.vocab import Vocab


@pytest.fixture(scope="module")
def model_and_batch():
    cfg = tiny_config("runtime.loss_chunk=40")  # 96 frames: 3 chunks, the last one padded
    graphdef, state, _ = init_model(cfg.model, cfg.runtime, make_mesh(cfg.mesh, jax.devices()[:1]), cfg.mesh.rules)
    model = nnx.merge(graphdef, state)
    # Non-zero stream embeddings so the streams >= 1 head input is really tested.
    model.stream_emb[...] = jax.random.normal(jax.random.key(1), model.stream_emb.shape) * 0.1
    return (model, *packed_batch(model.vocab, cfg.model.continuous_dim))


def reference_loss(hidden, head, stream_emb, ids, mask, seg, vocab):
    """docs/model.md, Loss written plainly with explicit loops over positions and streams."""
    rows, frames, streams = ids.shape
    a0, na = vocab.audio_offset, vocab.audio_size
    total, positions = 0.0, 0
    per_stream = np.zeros(streams)
    weight = np.zeros(streams)
    for b in range(rows):
        for t in range(frames - 1):
            if seg[b, t + 1] == 0 or seg[b, t + 1] != seg[b, t]:
                continue
            positions += mask[b, t + 1, 0] != 0  # counted whatever the target (an ignored one too)
            for s in range(streams):
                w, target = mask[b, t + 1, s], ids[b, t + 1, s]
                if s == 0:
                    if target == 0:
                        w = 0.0
                    logits = hidden[b, t] @ head
                else:
                    if not a0 <= target < a0 + na:
                        w = 0.0
                    logits = (hidden[b, t] + stream_emb[s]) @ head[:, a0 : a0 + na]
                    target -= a0
                if w == 0:
                    continue
                m = logits.max()
                ce = m + np.log(np.exp(logits - m).sum()) - logits[target]
                total += w * ce
                per_stream[s] += w * ce
                weight[s] += w
    return total / positions, per_stream / weight


def jitted(model, method, *args):
    graphdef, params = nnx.split(model)
    return jax.jit(lambda p, *a: getattr(nnx.merge(graphdef, p), method)(*a))(params, *args)


def test_loss_matches_plain_reference(model_and_batch):
    model, batch, continuous = model_and_batch
    loss, sums = jitted(model, "loss", batch, continuous)
    metrics = stream_metrics(sums)
    hidden = np.asarray(jitted(model, "hidden_states", batch, continuous), np.float64)
    ref, ref_streams = reference_loss(
        hidden,
        np.asarray(model.lm_head[...], np.float64),
        np.asarray(model.stream_emb[...], np.float64),
        np.asarray(batch.ids),
        np.asarray(batch.loss_mask),
        np.asarray(batch.segment_ids),
        model.vocab,
    )
    np.testing.assert_allclose(float(loss), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(float(metrics["loss"]), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(metrics["stream_loss"]), ref_streams, rtol=1e-5, atol=1e-5)
    assert float(metrics["positions"]) > 0
    assert np.all(np.asarray(metrics["stream_accuracy"]) <= 1.0)


BANG = PreparedExample(  # user text, then assistant text holding token 0 ("!") and assistant audio
    "bang",
    "dialogue",
    0,
    (
        PreparedMessage("user", "text", "text", np.array([1], np.int32)),
        PreparedMessage("assistant", "text", "text", np.array([4, 0, 3], np.int32)),
        PreparedMessage("assistant", "audio", "codes", np.array([[0, 1]], np.int16)),
    ),
)


@pytest.mark.parametrize("token0_as_pad", [True, False])
def test_loss_ignores_a_weighted_pad_target_but_counts_it(token0_as_pad):
    """Hand-computed: with zero logits every stream-0 cross-entropy is log(vocab) V and every
    streams >= 1 one log(audio ids) A. The 11 assistant frames after the prompt weigh 1 on
    stream 0 (role, modality, 4, "!", 3, eot; role, modality, eos) except the two codec frames
    (1/2 on both streams): 11 positions count. With token 0 as the pad id (the default, as the
    reference), "!" is ignored in the sum but counted: loss = (8 log V + 2 / 2 log V + 2 / 2
    log A) / 11. The switch off makes "!" text id 16, scored like any token: (10 log V + log A)
    / 11, which is also what the loss gave before the reference fix (no template then holds a
    weighted target 0 that the old rule would drop from the denominator)."""
    vocab = Vocab(num_special=16, text_size=10, num_streams=2, codebook_size=3)
    out = template(BANG, vocab, output_lengths, piece_frames=200, mel_bins=4, text_token0_as_pad=token0_as_pad)
    assert (out["ids"][8, 0] == 0) == token0_as_pad and out["loss_mask"][8, 0] == 1
    # Weighted stream-0 targets of id 0: what the loss before the fix left out of the denominator.
    assert np.sum((out["loss_mask"][1:, 0] != 0) & (out["ids"][1:, 0] == 0)) == int(token0_as_pad)
    ids, mask = jnp.asarray(out["ids"])[None], jnp.asarray(out["loss_mask"])[None]
    segments = jnp.ones(ids.shape[:2], jnp.int32)
    hidden, head = jnp.zeros((1, ids.shape[1], 4)), jnp.zeros((4, vocab.size))
    loss, sums = multistream_loss(hidden, head, jnp.zeros((2, 4)), ids, mask, segments, vocab, 4)
    log_v, log_a = np.log(vocab.size), np.log(vocab.audio_size)
    scored = 9 if token0_as_pad else 10  # stream-0 weight of the scored targets
    np.testing.assert_allclose(float(loss), (scored * log_v + log_a) / 11, rtol=1e-6)
    assert float(sums["positions"]) == 11 == float(loss_positions(ids, mask, segments, vocab))
    np.testing.assert_allclose(np.asarray(sums["stream_weight"]), [scored, 1.0])


def test_loss_chunk_size_does_not_change_result(model_and_batch):
    model, batch, continuous = model_and_batch
    hidden = jitted(model, "hidden_states", batch, continuous)
    loss = jax.jit(multistream_loss, static_argnums=(6, 7))
    results = [
        loss(
            hidden,
            model.lm_head[...],
            model.stream_emb[...],
            batch.ids,
            batch.loss_mask,
            batch.segment_ids,
            model.vocab,
            chunk,
        )[0]
        for chunk in (7, 32, 96, 1000)
    ]
    np.testing.assert_allclose(results, results[0], rtol=1e-6)


def test_embedding_sums_streams_and_injects_continuous(model_and_batch):
    model, batch, continuous = model_and_batch
    table = np.asarray(model.embed[...])
    ids = np.asarray(batch.ids)
    expected = table[ids[..., 0]] + sum(
        np.where((ids[..., s] != 0)[..., None], table[ids[..., s]], 0) for s in range(1, ids.shape[-1])
    )
    adapted = np.asarray(continuous.features) @ np.asarray(model.adaptor_kernel[...]) + np.asarray(
        model.adaptor_bias[...]
    )
    for b, row in enumerate(np.asarray(continuous.frames)):
        for i, f in enumerate(row):
            if f >= 0:
                expected[b, f] = adapted[b, i]
    x = model.inject_continuous(model.embed_frames(batch.ids), continuous)
    np.testing.assert_allclose(np.asarray(x), expected, rtol=1e-6, atol=1e-6)


def test_loss_has_gradient_for_every_param(model_and_batch):
    model, batch, continuous = model_and_batch
    graphdef, params = nnx.split(model)
    grads = jax.jit(jax.grad(lambda p: nnx.merge(graphdef, p).loss(batch, continuous)[0]))(params)
    for path, g in nnx.to_flat_state(grads):
        assert np.isfinite(np.asarray(g[...])).all(), path
        assert np.abs(np.asarray(g[...])).max() > 0, f"no gradient reaches {path}"


def test_sequence_longer_than_max_frames_is_an_error(model_and_batch):
    _, batch, _ = model_and_batch
    cfg = tiny_config("runtime.max_frames=64")
    small = nnx.eval_shape(lambda: Bagpiper(cfg.model, cfg.runtime, rngs=nnx.Rngs(0)))  # the check precedes any math
    with pytest.raises(ValueError, match="exceeds runtime.max_frames=64"):
        small.loss(batch)


def test_remat_policies_give_the_same_gradients(model_and_batch):
    """Every ``runtime.remat`` policy only changes what the backward pass recomputes (and
    unrolling the layers, ``runtime.scan_layers=false``, changes nothing)."""
    _, batch, continuous = model_and_batch
    grads = {}
    for policy in ("none", "dots", "dots_attention", "qkv_attention", "full", "dots runtime.scan_layers=false"):
        cfg = tiny_config("runtime.loss_chunk=40", *f"runtime.remat={policy}".split())
        graphdef, state, _ = init_model(cfg.model, cfg.runtime, make_mesh(cfg.mesh, jax.devices()[:1]), cfg.mesh.rules)
        grads[policy] = jax.jit(jax.grad(lambda p, g=graphdef: nnx.merge(g, p).loss(batch, continuous)[0]))(state)
    for g in grads.values():
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7),
            g,
            grads["none"],
        )
