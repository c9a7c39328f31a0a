"""Attention kernels behind ``model.attention``; all honour packed segments and causality.

A kernel takes ``q [batch, frames, heads, head_dim]``, ``k, v [batch, frames, kv_heads,
head_dim]`` and ``segment_ids [batch, frames]`` (0 = padding) and returns
``[batch, frames, heads, head_dim]``. A query attends to keys at the same or earlier
frames of its own segment; padding frames attend to nothing useful (their output is
never trained on).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

AttentionKernel = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]


def segment_causal_mask(segment_ids: jax.Array) -> jax.Array:
    """``[batch, frames, frames]`` bool: same non-zero segment and key frame <= query frame."""
    frames = segment_ids.shape[1]
    same = (segment_ids[:, :, None] == segment_ids[:, None, :]) & (segment_ids[:, :, None] != 0)
    causal = jnp.arange(frames)[:, None] >= jnp.arange(frames)[None, :]
    return same & causal


def xla_attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array) -> jax.Array:
    """Reference grouped-query attention in plain XLA; softmax in float32.

    Heads are moved in front of frames so both products are plain batched matmuls over
    ``(batch, kv_head)`` (the layout every backend, the CPU included, runs fastest).
    """
    batch, frames, heads, head_dim = q.shape
    kv_heads = k.shape[2]
    group = heads // kv_heads
    q = q.reshape(batch, frames, kv_heads, group, head_dim).transpose(0, 2, 3, 1, 4)
    q = q.reshape(batch, kv_heads, group * frames, head_dim)
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [batch, kv_heads, frames, head_dim]
    scores = jnp.einsum("bkqd,bksd->bkqs", q, k, preferred_element_type=jnp.float32) * head_dim ** -0.5
    scores = scores.reshape(batch, kv_heads, group, frames, frames)
    scores = jnp.where(segment_causal_mask(segment_ids)[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype).reshape(batch, kv_heads, group * frames, frames)
    out = jnp.einsum("bkqs,bksd->bkqd", probs, v).reshape(batch, kv_heads, group, frames, head_dim)
    return out.transpose(0, 3, 1, 2, 4).reshape(batch, frames, heads, head_dim)


def cudnn_attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array) -> jax.Array:
    """cuDNN fused attention (GPU) with the segment-causal mask passed as a dense mask."""
    mask = segment_causal_mask(segment_ids)[:, None]
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="cudnn")


_KERNELS: dict[str, AttentionKernel] = {"xla": xla_attention}
if jax.default_backend() == "gpu":
    _KERNELS["cudnn"] = cudnn_attention


def get_kernel(name: str) -> AttentionKernel:
    """The kernel registered under ``name``; a clear error when it is not available here."""
    if name not in _KERNELS:
        raise NotImplementedError(
            f"attention kernel {name!r} is not available on backend {jax.default_backend()!r} in this "
            f"version (available: {sorted(_KERNELS)}); set model.attention=xla")
    return _KERNELS[name]
