"""Attention kernels behind ``runtime.attention``; all honour packed segments and causality.

A kernel takes ``q [batch, frames, heads, head_dim]``, ``k, v [batch, frames, kv_heads,
head_dim]`` and ``segment_ids [batch, frames]`` (0 = padding) and returns
``[batch, frames, heads, head_dim]``. A query attends to keys at the same or earlier
frames of its own segment; padding frames attend to nothing useful (their output is
never trained on, and no kernel produces NaNs there).

=============  ========  =====================================================================
name           backends  implementation
=============  ========  =====================================================================
``xla``        all       :func:`xla_attention`, the reference (dense [frames, frames] scores)
``cudnn``      gpu       cuDNN fused attention with the segment-causal mask as a dense mask
``pallas_gpu`` gpu       Pallas (Triton) flash attention with segment ids, :class:`PallasGpuAttention`
``splash``     tpu       Pallas Splash attention with segment ids, :class:`SplashAttention`
=============  ========  =====================================================================

The Pallas kernels are ``jax.shard_map`` -ed over the ambient mesh (``jax.set_mesh``):
rows over the mesh axes of ``activation_batch``, heads over those of
``activation_heads``/``activation_kv_heads`` (the rules table); frames are never split.
``splash`` is not tied to the current backend so that a CPU host can compile it for TPU
ahead of time (``bench/compile_tpu.py``); run on CPU, it needs ``interpret=True``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.gpu import attention as pallas_gpu
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask
from jax.sharding import PartitionSpec

from bagpiper_jax.config import RuntimeConfig
from bagpiper_jax.sharding import Rules, logical_to_spec

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
    scores = jnp.einsum("bkqd,bksd->bkqs", q, k, preferred_element_type=jnp.float32) * head_dim**-0.5
    scores = scores.reshape(batch, kv_heads, group, frames, frames)
    scores = jnp.where(segment_causal_mask(segment_ids)[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype).reshape(batch, kv_heads, group * frames, frames)
    out = jnp.einsum("bkqs,bksd->bkqd", probs, v).reshape(batch, kv_heads, group, frames, head_dim)
    return out.transpose(0, 3, 1, 2, 4).reshape(batch, frames, heads, head_dim)


def cudnn_attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array) -> jax.Array:
    """cuDNN fused attention (GPU) with the segment-causal mask passed as a dense mask."""
    mask = segment_causal_mask(segment_ids)[:, None]
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="cudnn")


def _tile(block: int, frames: int, what: str) -> int:
    """``block`` clamped to ``frames``; an error unless it divides ``frames``."""
    tile = min(block, frames)
    if frames % tile:
        raise ValueError(
            f"{what}: {frames} frames per row are not a multiple of the {tile}-frame tile; "
            f"choose data.row_frames / the runtime.*_block_* sizes so that they divide"
        )
    return tile


def _shard_over_mesh(local: AttentionKernel, rules: Rules) -> AttentionKernel:
    """``local`` (a kernel on one device's rows and heads) ``shard_map``-ed over the ambient
    mesh: rows split like ``activation_batch``, heads like ``activation_(kv_)heads``, frames
    whole; each must divide evenly. Without a mesh, ``local`` itself."""

    def sharded(q, k, v, segment_ids):
        mesh = jax.sharding.get_abstract_mesh()
        if mesh.empty:
            return local(q, k, v, segment_ids)
        q_spec = logical_to_spec(("activation_batch", None, "activation_heads", None), rules)
        kv_spec = logical_to_spec(("activation_batch", None, "activation_kv_heads", None), rules)
        seg_spec = PartitionSpec(q_spec[0], None)
        for what, size, axes in (
            ("rows", q.shape[0], q_spec[0]),
            ("heads", q.shape[2], q_spec[2]),
            ("kv_heads", k.shape[2], kv_spec[2]),
        ):
            axes = axes if isinstance(axes, tuple) else (axes,)
            shards = math.prod(mesh.shape[a] for a in axes if a is not None)
            if size % shards:
                hint = " (rows per micro-batch = data.batch_rows / train.grad_accum)" if what == "rows" else ""
                raise ValueError(
                    f"Pallas attention splits {what} over mesh axes {axes} ({shards} shards), but "
                    f"there are {size}{hint}; use a multiple, or runtime.attention=xla"
                )
        return jax.shard_map(
            local, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec, seg_spec), out_specs=q_spec, check_vma=False
        )(q, k, v, segment_ids)

    return sharded


@dataclasses.dataclass(frozen=True)
class SplashAttention:
    """Pallas Splash attention (TPU) with segment ids; grouped-query heads share their KV head.

    Per row: a causal :class:`MultiHeadMask` anded with ``SegmentIds`` (frames attend only
    within their segment id; padding, id 0, attends causally to padding, so no softmax row
    is empty). ``q`` is scaled by ``head_dim ** -0.5`` before the kernel (Splash does not
    scale). Tiles (frames) must divide the row length and be multiples of 128.
    ``interpret=True`` runs the kernel in the Pallas interpreter (any backend, slow).
    Mosaic rejects bf16 operands under ``jax_default_matmul_precision="highest"`` (fp32
    contraction); leave that setting at its default for bf16 models.
    """

    block_q: int = 512
    block_kv: int = 512
    block_kv_compute: int = 512
    fused_bwd: bool = False
    rules: Rules = ()
    interpret: bool = False

    def block_sizes(self, frames: int) -> splash.BlockSizes:
        """The kernel's tiles for rows of ``frames`` (clamped to short rows)."""
        bq, bkv = _tile(self.block_q, frames, "splash"), _tile(self.block_kv, frames, "splash")
        bkv_compute = _tile(min(self.block_kv_compute, bkv), bkv, "splash block_kv")
        backward = dict(block_q_dkv=bq, block_kv_dkv=bkv, block_kv_dkv_compute=bkv_compute)
        if not self.fused_bwd:
            backward.update(block_q_dq=bq, block_kv_dq=bkv)
        return splash.BlockSizes(
            block_q=bq, block_kv=bkv, block_kv_compute=bkv_compute, use_fused_bwd_kernel=self.fused_bwd, **backward
        )

    def local(self, q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array) -> jax.Array:
        """The kernel on unsharded arrays (one device's rows and heads)."""
        _, frames, heads, head_dim = q.shape
        mask = splash_mask.MultiHeadMask([splash_mask.CausalMask((frames, frames))] * heads)
        kernel = splash.make_splash_mha(
            mask, block_sizes=self.block_sizes(frames), head_shards=1, q_seq_shards=1, interpret=self.interpret
        )

        def row(q, k, v, seg):  # [frames, heads, head_dim] -> kernel layout [heads, frames, head_dim]
            out = kernel(
                (q * head_dim**-0.5).swapaxes(0, 1),
                k.swapaxes(0, 1),
                v.swapaxes(0, 1),
                splash.SegmentIds(q=seg, kv=seg),
            )
            return out.swapaxes(0, 1)

        return jax.vmap(row)(q, k, v, segment_ids)

    def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array) -> jax.Array:
        return _shard_over_mesh(self.local, self.rules)(q, k, v, segment_ids)


@dataclasses.dataclass(frozen=True)
class PallasGpuAttention:
    """Pallas (Triton) flash attention (GPU) with segment ids and causality.

    The kernel has no grouped-query support: each KV head is repeated over its query heads
    (the repeat's gradient sums back). Padding (id 0) attends causally to padding.
    ``block_bwd`` is the tile of all four backward tile sizes. ``interpret=True`` runs the
    kernel in the Pallas interpreter (any backend, slow).
    """

    block_q: int = 128
    block_kv: int = 128
    block_bwd: int = 32
    rules: Rules = ()
    interpret: bool = False

    def local(self, q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array) -> jax.Array:
        """The kernel on unsharded arrays (one device's rows and heads)."""
        frames, heads, head_dim = q.shape[1:]
        group = heads // k.shape[2]
        bwd = _tile(self.block_bwd, frames, "pallas_gpu backward")
        blocks = pallas_gpu.BlockSizes(
            block_q=_tile(self.block_q, frames, "pallas_gpu"),
            block_k=_tile(self.block_kv, frames, "pallas_gpu"),
            block_q_dkv=bwd,
            block_kv_dkv=bwd,
            block_q_dq=bwd,
            block_kv_dq=bwd,
        )
        return pallas_gpu.mha(
            q,
            jnp.repeat(k, group, axis=2),
            jnp.repeat(v, group, axis=2),
            segment_ids,
            sm_scale=head_dim**-0.5,
            causal=True,
            block_sizes=blocks,
            interpret=self.interpret,
        )

    def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array) -> jax.Array:
        return _shard_over_mesh(self.local, self.rules)(q, k, v, segment_ids)


_GPU_ONLY = ("cudnn", "pallas_gpu")


def get_kernel(cfg: RuntimeConfig, rules: Rules = ()) -> AttentionKernel:
    """The kernel ``cfg.attention`` with ``cfg``'s tiles; ``rules`` place the Pallas kernels'
    ``shard_map``. A clear error when the kernel cannot run on this backend."""
    name = cfg.attention
    if name in _GPU_ONLY and jax.default_backend() != "gpu":
        raise NotImplementedError(
            f"attention kernel {name!r} needs a GPU, the backend here is {jax.default_backend()!r}; "
            f"set runtime.attention=xla (or splash on TPU)"
        )
    if name == "xla":
        return xla_attention
    if name == "cudnn":
        return cudnn_attention
    if name == "pallas_gpu":
        return PallasGpuAttention(cfg.gpu_block_q, cfg.gpu_block_kv, cfg.gpu_block_bwd, rules)
    if name == "splash":
        return SplashAttention(
            cfg.splash_block_q, cfg.splash_block_kv, cfg.splash_block_kv_compute, cfg.splash_fused_bwd, rules
        )
    raise ValueError(f"unknown attention kernel {name!r}")
