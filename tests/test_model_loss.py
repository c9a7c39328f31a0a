"""The model's loss and embedding against plain, unchunked references (docs/model.md, Frames and
streams; Loss)."""

import jax
import numpy as np
import pytest
from flax import nnx
from helpers import packed_batch, tiny_config

from bagpiper_jax.model import Bagpiper
from bagpiper_jax.model.create import init_model
from bagpiper_jax.model.loss import multistream_loss, stream_metrics
from bagpiper_jax.sharding import make_mesh


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
                positions += s == 0
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
    """Every ``runtime.remat`` policy only changes what the backward pass recomputes."""
    _, batch, continuous = model_and_batch
    grads = {}
    for policy in ("none", "dots", "dots_attention", "qkv_attention", "full"):
        cfg = tiny_config("runtime.loss_chunk=40", f"runtime.remat={policy}")
        graphdef, state, _ = init_model(cfg.model, cfg.runtime, make_mesh(cfg.mesh, jax.devices()[:1]), cfg.mesh.rules)
        grads[policy] = jax.jit(jax.grad(lambda p, g=graphdef: nnx.merge(g, p).loss(batch, continuous)[0]))(state)
    for g in grads.values():
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7),
            g,
            grads["none"],
        )
