"""Attention kernels against the XLA reference: segment isolation, causality, gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bagpiper_jax.model.attention_kernels import get_kernel, segment_causal_mask, xla_attention


def inputs(batch=2, frames=48, heads=4, kv_heads=2, head_dim=16, seed=0):
    r = np.random.default_rng(seed)
    q = jnp.asarray(r.normal(size=(batch, frames, heads, head_dim)), jnp.float32)
    k = jnp.asarray(r.normal(size=(batch, frames, kv_heads, head_dim)), jnp.float32)
    v = jnp.asarray(r.normal(size=(batch, frames, kv_heads, head_dim)), jnp.float32)
    seg = np.zeros((batch, frames), np.int32)
    seg[0, :20], seg[0, 20:41] = 1, 2  # two segments and padding
    seg[1, :] = 1
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


def test_unavailable_kernel_is_a_clear_error():
    if jax.default_backend() == "gpu":
        pytest.skip("cudnn is available on GPU")
    with pytest.raises(NotImplementedError, match="'cudnn' is not available on backend 'cpu'"):
        get_kernel("cudnn")


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs a GPU")
def test_cudnn_matches_xla_forward_and_gradients():
    q, k, v, seg = (x.astype(jnp.bfloat16) if x.dtype == jnp.float32 else x for x in inputs(frames=256, head_dim=64))
    weight = (seg > 0)[:, :, None, None]

    def loss(kernel):
        return jax.jit(jax.value_and_grad(lambda q, k, v: jnp.sum(kernel(q, k, v, seg).astype(jnp.float32) ** 2
                                                                    * weight), argnums=(0, 1, 2)))(q, k, v)
    (l1, g1), (l2, g2) = loss(xla_attention), loss(get_kernel("cudnn"))
    np.testing.assert_allclose(float(l2), float(l1), rtol=1e-2)
    for a, b in zip(g1, g2):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        assert np.abs(a - b).max() <= 2e-2 * np.abs(a).max()
