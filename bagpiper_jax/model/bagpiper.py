"""The Bagpiper multi-stream transformer (DESIGN §2.3).

Input: frames of ``num_streams`` ids. A frame's embedding is the sum of its streams'
embedding rows, where a stream >= 1 holding id 0 (pad) contributes nothing. Frames of a
continuous-audio segment are replaced by ``adaptor(encoder features)``. The final hidden
state feeds one shared lm_head; streams >= 1 first add their learned stream embedding.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from bagpiper_jax.config import ModelConfig
from bagpiper_jax.model.decoder import HIDDEN_AXES, Decoder
from bagpiper_jax.model.kv_cache import KVCache, cache_mask
from bagpiper_jax.model.loss import multistream_loss
from bagpiper_jax.model.norm import RMSNorm
from bagpiper_jax.sharding import Rules, constrain, param
from bagpiper_jax.vocab import Vocab


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Batch:
    """A batch of packed rows.

    ids: int32 ``[batch, frames, streams]`` unified-vocabulary ids.
    segment_ids: int32 ``[batch, frames]``; 1, 2, ... per packed example, 0 = padding.
    positions: int32 ``[batch, frames]``; RoPE positions, restarting at 0 per segment.
    loss_mask: float32 ``[batch, frames, streams]`` per-frame, per-stream loss weights.
    continuous: float ``[batch, n, continuous_dim]`` encoder features (or None).
    continuous_frames: int32 ``[batch, n]`` frame index each feature row replaces; -1 = none.
    """

    ids: jax.Array
    segment_ids: jax.Array
    positions: jax.Array
    loss_mask: jax.Array
    continuous: jax.Array | None = None
    continuous_frames: jax.Array | None = None


class Bagpiper(nnx.Module):
    def __init__(self, cfg: ModelConfig, rules: Rules = (), *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.vocab = Vocab.from_config(cfg)
        self.rules = rules
        init = jax.nn.initializers.normal(cfg.init_std)
        dtype = jnp.dtype(cfg.param_dtype)
        self.embed = param(init(rngs.params(), (self.vocab.size, cfg.hidden), dtype), ("vocab", "embed"))
        self.adaptor_kernel = param(init(rngs.params(), (cfg.continuous_dim, cfg.hidden), dtype),
                                    ("continuous", "embed"))
        self.adaptor_bias = param(jnp.zeros((cfg.hidden,), dtype), ("embed",))
        self.decoder = Decoder(cfg, rules, rngs=rngs)
        self.final_norm = RMSNorm(cfg.hidden, cfg.rms_eps, param_dtype=dtype)
        self.stream_emb = param(jnp.zeros((cfg.num_streams, cfg.hidden), dtype), ("streams", "embed"))
        self.lm_head = param(init(rngs.params(), (cfg.hidden, self.vocab.size), dtype), ("embed", "vocab"))

    @property
    def compute_dtype(self):
        return jnp.dtype(self.cfg.dtype)

    def embed_frames(self, ids: jax.Array) -> jax.Array:
        """``ids [batch, frames, streams]`` -> summed embeddings ``[batch, frames, hidden]``."""
        table = constrain(self.embed[...], ("vocab", None), self.rules)  # gather the fsdp shards

        def lookup(stream_ids):  # gathered straight into the activation sharding
            rows = jnp.take(table, stream_ids, axis=0).astype(self.compute_dtype)
            return constrain(rows, HIDDEN_AXES, self.rules)

        x = lookup(ids[..., 0])
        for s in range(1, ids.shape[-1]):
            x = x + jnp.where((ids[..., s] != 0)[..., None], lookup(ids[..., s]), 0)
        return x

    def inject_continuous(self, x: jax.Array, features: jax.Array, frames: jax.Array) -> jax.Array:
        """Replaces frames ``frames [batch, n]`` of ``x`` by ``adaptor(features [batch, n, c])``."""
        dtype = self.compute_dtype
        adapted = (features.astype(dtype) @ self.adaptor_kernel[...].astype(dtype)
                   + self.adaptor_bias[...].astype(dtype))
        index = jnp.where(frames >= 0, frames, x.shape[1])  # out of range -> dropped
        rows = jnp.arange(x.shape[0])[:, None]
        return x.at[rows, index].set(adapted, mode="drop")

    def hidden_states(self, batch: Batch) -> jax.Array:
        """Final-norm hidden states ``[batch, frames, hidden]`` in the compute dtype."""
        cfg = self.cfg
        n_batch, frames, streams = batch.ids.shape
        if streams != cfg.num_streams:
            raise ValueError(f"ids have {streams} streams, the model has {cfg.num_streams}")
        if frames > cfg.max_frames:
            raise ValueError(f"sequence of {frames} frames exceeds model.max_frames={cfg.max_frames}")
        x = self.embed_inputs(batch.ids, batch.continuous, batch.continuous_frames)
        x = self.decoder(x, batch.positions, batch.segment_ids)
        return self.final_norm(x)

    def embed_inputs(self, ids: jax.Array, continuous: jax.Array | None = None,
                     continuous_frames: jax.Array | None = None) -> jax.Array:
        """Frame embeddings ``[batch, frames, hidden]`` with continuous features injected."""
        x = self.embed_frames(ids)
        if continuous is not None:
            x = self.inject_continuous(x, continuous, continuous_frames)
        return constrain(x, HIDDEN_AXES, self.rules)

    def extend(self, ids: jax.Array, first: jax.Array, cache: KVCache, start: jax.Array,
               continuous: jax.Array | None = None,
               continuous_frames: jax.Array | None = None) -> tuple[jax.Array, KVCache]:
        """Incremental forward: frames ``ids [batch, frames, streams]`` at cache slots
        ``start ...`` of left-padded rows (row ``b`` starts at slot ``first [batch]``; see
        :mod:`bagpiper_jax.model.kv_cache`). ``continuous_frames`` index these frames.

        Returns final-norm hidden states ``[batch, frames, hidden]`` and the cache holding
        the frames' keys/values.
        """
        frames = ids.shape[1]
        positions = jnp.maximum(start + jnp.arange(frames)[None, :] - first[:, None], 0)
        mask = cache_mask(first, start, frames, cache.slots)
        x = self.embed_inputs(ids, continuous, continuous_frames)
        x, cache = self.decoder.extend(x, positions, mask, cache, start)
        return self.final_norm(x), cache

    def stream_logits(self, hidden: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Float32 logits, for inference and tests on short inputs.

        Returns ``stream 0 [batch, frames, vocab]`` and ``streams >= 1
        [batch, frames, streams-1, audio]`` over the audio range.
        """
        head = self.lm_head[...].astype(hidden.dtype)
        v = self.vocab
        logits0 = jnp.einsum("btd,dv->btv", hidden, head, preferred_element_type=jnp.float32)
        hs = hidden[:, :, None, :] + self.stream_emb[1:].astype(hidden.dtype)
        audio_head = head[:, v.audio_offset:v.audio_offset + v.audio_size]
        return logits0, jnp.einsum("btsd,dv->btsv", hs, audio_head, preferred_element_type=jnp.float32)

    def loss(self, batch: Batch, denominator: jax.Array | None = None):
        """``(loss, metric sums)`` of DESIGN §2.4 (see :mod:`bagpiper_jax.model.loss`)."""
        hidden = self.hidden_states(batch)
        return multistream_loss(hidden, self.lm_head[...], self.stream_emb[...], batch.ids,
                                batch.loss_mask, batch.segment_ids, self.vocab, self.cfg.loss_chunk,
                                self.rules, denominator)
