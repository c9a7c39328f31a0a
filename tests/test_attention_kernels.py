"""Attention kernels against the XLA reference: segment isolation, causality, gradients.

The Pallas kernels (Splash for TPU, flash attention for GPU) run in the Pallas interpreter
on CPU, sharded over the 8 simulated devices like in the train step.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bagpiper_jax.config import ConfigError, MeshConfig, RuntimeConfig
from bagpiper_jax.model.attention_kernels import (
    PallasGpuAttention,
    SplashAttention,
    get_kernel,
    segment_causal_mask,
    xla_attention,
)
from bagpiper_jax.sharding import make_mesh


def inputs(batch=2, frames=48, heads=4, kv_heads=2, head_dim=16, seed=0):
    r = np.random.default_rng(seed)
    q = jnp.asarray(r.normal(size=(batch, frames, heads, head_dim)), jnp.float32)
    k = jnp.asarray(r.normal(size=(batch, frames, kv_heads, head_dim)), jnp.float32)
    v = jnp.asarray(r.normal(size=(batch, frames, kv_heads, head_dim)), jnp.float32)
    seg = np.zeros((batch, frames), np.int32)
    seg[0, :20], seg[0, 20:41] = 1, 2  # two segments and padding
    seg[1, :] = 1
    return q, k, v, jnp.asarray(seg)


def packed_inputs(batch=4, frames=256, heads=4, kv_heads=2, head_dim=32, seed=1):
    """Rows of several segments crossing 128-frame tiles, with padding at the end."""
    q, k, v, _ = inputs(batch, frames, heads, kv_heads, head_dim, seed)
    bounds = [(0, 100, 170, 250), (0, 256), (0, 7, 129, 130, 200), (0, 60)]
    seg = np.zeros((batch, frames), np.int32)
    for b, cuts in enumerate(bounds[:batch]):
        for i, (start, stop) in enumerate(itertools.pairwise(cuts)):
            seg[b, start:stop] = i + 1
    return q, k, v, jnp.asarray(seg)


def test_xla_attention_equals_per_segment_causal_softmax():
    q, k, v, seg = inputs()
    out = np.asarray(xla_attention(q, k, v, seg))
    qn, kn, vn, sn = map(np.asarray, (q, k, v, seg))
    for b in range(q.shape[0]):
        for t in range(q.shape[1]):
            if sn[b, t] == 0:
                continue
            keys = [s for s in range(t + 1) if sn[b, s] == sn[b, t]]
            for h in range(q.shape[2]):
                g = h // (q.shape[2] // k.shape[2])
                scores = kn[b, keys, g] @ qn[b, t, h] / np.sqrt(q.shape[-1])
                p = np.exp(scores - scores.max())
                np.testing.assert_allclose(out[b, t, h], (p / p.sum()) @ vn[b, keys, g], rtol=1e-5, atol=1e-5)


def test_segments_do_not_leak():
    q, k, v, seg = inputs()
    base = xla_attention(q, k, v, seg)
    # Changing the second segment's keys/values leaves the first segment's outputs unchanged.
    k2, v2 = k.at[0, 20:].add(3.0), v.at[0, 20:].add(3.0)
    np.testing.assert_array_equal(np.asarray(xla_attention(q, k2, v2, seg))[0, :20], np.asarray(base)[0, :20])
    assert not segment_causal_mask(seg)[0, 25, 5] and segment_causal_mask(seg)[0, 25, 21]


@pytest.mark.parametrize("name", ["cudnn", "pallas_gpu"])
def test_gpu_kernels_off_gpu_are_a_clear_error(name):
    if jax.default_backend() == "gpu":
        pytest.skip("GPU kernels are available on GPU")
    with pytest.raises(NotImplementedError, match=f"'{name}' needs a GPU, the backend here is 'cpu'"):
        get_kernel(RuntimeConfig(attention=name))


def test_get_kernel_takes_tiles_and_rules_from_config():
    rules = MeshConfig().rules
    kernel = get_kernel(
        RuntimeConfig(
            attention="splash",
            splash_block_q=256,
            splash_block_kv=1024,
            splash_block_kv_compute=256,
            splash_fused_bwd=True,
        ),
        rules,
    )
    assert kernel == SplashAttention(256, 1024, 256, True, rules)
    blocks = kernel.block_sizes(512)  # tiles clamp to short rows
    assert (blocks.block_q, blocks.block_kv, blocks.block_kv_compute, blocks.use_fused_bwd_kernel) == (
        256,
        512,
        256,
        True,
    )
    with pytest.raises(ValueError, match="384 frames per row are not a multiple of the 256-frame tile"):
        kernel.block_sizes(384)
    with pytest.raises(ConfigError, match="splash_block_q must be a multiple of 128"):
        RuntimeConfig(splash_block_q=100)


def _loss_and_grads(kernel, q, k, v, seg, weight):
    """Weighted sum of the outputs at non-padding frames, and its gradients w.r.t. q, k, v."""

    def loss(q, k, v):
        return jnp.sum(kernel(q, k, v, seg) * weight * (seg > 0)[:, :, None, None])

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, k, v)


INTERPRETED = {
    "splash": SplashAttention(
        block_q=128, block_kv=128, block_kv_compute=128, rules=MeshConfig().rules, interpret=True
    ),
    "splash_fused_bwd": SplashAttention(
        block_q=128, block_kv=128, block_kv_compute=128, fused_bwd=True, rules=MeshConfig().rules, interpret=True
    ),
    "pallas_gpu": PallasGpuAttention(block_q=64, block_kv=64, block_bwd=64, rules=MeshConfig().rules, interpret=True),
}


@pytest.mark.parametrize("name", sorted(INTERPRETED))
def test_pallas_kernel_matches_xla_forward_and_gradients_sharded(name):
    """Interpreted kernel, shard_mapped over data=2 x fsdp=2 x tensor=2, vs the XLA reference:
    GQA (4 query heads on 2 KV heads), packed rows with padding, forward and q/k/v gradients."""
    q, k, v, seg = packed_inputs()
    weight = jnp.asarray(np.random.default_rng(2).normal(size=q.shape), jnp.float32)
    valid = np.asarray(seg > 0)
    ref_loss, ref_grads = _loss_and_grads(xla_attention, q, k, v, seg, weight)
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    with jax.set_mesh(mesh):
        out = jax.jit(INTERPRETED[name])(q, k, v, seg)
        loss, grads = _loss_and_grads(INTERPRETED[name], q, k, v, seg, weight)
    out = np.asarray(out)
    assert np.isfinite(out).all()  # padding frames too
    np.testing.assert_allclose(out[valid], np.asarray(xla_attention(q, k, v, seg))[valid], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-4)
    for got, want in zip(grads, ref_grads):
        got, want = np.asarray(got), np.asarray(want)
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_rows_that_do_not_split_over_the_mesh_are_a_clear_error():
    q, k, v, seg = packed_inputs(batch=2)
    with (
        jax.set_mesh(make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))),
        pytest.raises(
            ValueError,
            match=r"splits rows over mesh axes \('data', 'fsdp'\) \(4 shards\), but "
            r"there are 2",
        ),
    ):
        jax.jit(INTERPRETED["splash"])(q, k, v, seg)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="GPU kernels need a GPU")
@pytest.mark.parametrize("name", ["cudnn", "pallas_gpu"])
def test_gpu_kernel_matches_xla_forward_and_gradients(name):
    q, k, v, seg = (
        x.astype(jnp.bfloat16) if x.dtype == jnp.float32 else x for x in packed_inputs(frames=512, head_dim=64)
    )
    weight = (seg > 0)[:, :, None, None]

    def loss(kernel):
        return jax.jit(
            jax.value_and_grad(
                lambda q, k, v: jnp.sum(kernel(q, k, v, seg).astype(jnp.float32) ** 2 * weight), argnums=(0, 1, 2)
            )
        )(q, k, v)

    (l1, g1), (l2, g2) = loss(xla_attention), loss(get_kernel(RuntimeConfig(attention=name), MeshConfig().rules))
    np.testing.assert_allclose(float(l2), float(l1), rtol=1e-2)
    for a, b in zip(g1, g2):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        assert np.abs(a - b).max() <= 2e-2 * np.abs(a).max()
