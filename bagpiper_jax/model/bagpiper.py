"""The Bagpiper multi-stream transformer (docs/model.md, Frames and streams).

Input: frames of ``num_streams`` ids. A frame's embedding is the sum of its streams'
embedding rows, where a stream >= 1 holding id 0 (pad) contributes nothing. Frames of a
continuous-audio segment are replaced by ``adaptor(encoder features)``. The final hidden
state feeds one shared lm_head; streams >= 1 first add their learned stream embedding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from bagpiper_jax.audio_encoder.pieces import Continuous
from bagpiper_jax.config import ModelConfig, RuntimeConfig
from bagpiper_jax.model.batch import Batch
from bagpiper_jax.model.decoder import HIDDEN_AXES, Decoder
from bagpiper_jax.model.kv_cache import KVCache, cache_mask
from bagpiper_jax.model.loss import multistream_loss
from bagpiper_jax.model.norm import RMSNorm
from bagpiper_jax.sharding import Rules, constrain, param
from bagpiper_jax.vocab import Vocab


class Bagpiper(nnx.Module):
    """The multi-stream transformer: embeddings, adaptor, scanned Qwen3 decoder, final norm,
    stream embeddings and the shared lm_head.

    Args:
      cfg: the architecture.
      runtime: numerics and kernels (compute/param dtypes, remat, attention kernel, loss chunk).
      rules: the logical-axis rules table of the mesh (``MeshConfig.rules``).

    Inputs are frames ``ids [rows, frames, streams]`` (see :class:`Batch`) and, for
    continuous audio, :class:`Continuous` features from the frozen tower.
    """

    def __init__(
        self, cfg: ModelConfig, runtime: RuntimeConfig = RuntimeConfig(), rules: Rules = (), *, rngs: nnx.Rngs
    ):
        self.cfg = cfg
        self.runtime = runtime
        self.vocab = Vocab.from_config(cfg)
        self.rules = rules
        init = jax.nn.initializers.normal(cfg.init_std)
        dtype = jnp.dtype(runtime.param_dtype)
        self.embed = param(init(rngs.params(), (self.vocab.size, cfg.hidden), dtype), ("vocab", "embed"))
        self.adaptor_kernel = param(
            init(rngs.params(), (cfg.continuous_dim, cfg.hidden), dtype), ("continuous", "embed")
        )
        self.adaptor_bias = param(jnp.zeros((cfg.hidden,), dtype), ("embed",))
        self.decoder = Decoder(cfg, runtime, rules, rngs=rngs)
        self.final_norm = RMSNorm(cfg.hidden, cfg.rms_eps, param_dtype=dtype)
        self.stream_emb = param(jnp.zeros((cfg.num_streams, cfg.hidden), dtype), ("streams", "embed"))
        self.lm_head = param(init(rngs.params(), (cfg.hidden, self.vocab.size), dtype), ("embed", "vocab"))

    @property
    def compute_dtype(self):
        return jnp.dtype(self.runtime.dtype)

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

    def inject_continuous(self, x: jax.Array, continuous: Continuous) -> jax.Array:
        """Replaces frames ``continuous.frames [batch, n]`` of ``x`` by
        ``adaptor(continuous.features [batch, n, c])``."""
        dtype = self.compute_dtype
        kernel, bias = self.adaptor_kernel[...].astype(dtype), self.adaptor_bias[...].astype(dtype)
        adapted = continuous.features.astype(dtype) @ kernel + bias
        index = jnp.where(continuous.frames >= 0, continuous.frames, x.shape[1])  # out of range -> dropped
        rows = jnp.arange(x.shape[0])[:, None]
        return x.at[rows, index].set(adapted, mode="drop")

    def hidden_states(self, batch: Batch, continuous: Continuous | None = None) -> jax.Array:
        """Final-norm hidden states ``[batch, frames, hidden]`` in the compute dtype."""
        _, frames, streams = batch.ids.shape
        if streams != self.cfg.num_streams:
            raise ValueError(f"ids have {streams} streams, the model has {self.cfg.num_streams}")
        if frames > self.runtime.max_frames:
            raise ValueError(f"sequence of {frames} frames exceeds runtime.max_frames={self.runtime.max_frames}")
        x = self.embed_inputs(batch.ids, continuous)
        x = self.decoder(x, batch.positions, batch.segment_ids)
        return self.final_norm(x)

    def embed_inputs(self, ids: jax.Array, continuous: Continuous | None = None) -> jax.Array:
        """Frame embeddings ``[batch, frames, hidden]`` with continuous features injected."""
        x = self.embed_frames(ids)
        if continuous is not None:
            x = self.inject_continuous(x, continuous)
        return constrain(x, HIDDEN_AXES, self.rules)

    def extend(
        self, ids: jax.Array, first: jax.Array, cache: KVCache, start: jax.Array, continuous: Continuous | None = None
    ) -> tuple[jax.Array, KVCache]:
        """Incremental forward: frames ``ids [batch, frames, streams]`` at cache slots
        ``start ...`` of left-padded rows (row ``b`` starts at slot ``first [batch]``; see
        :mod:`bagpiper_jax.model.kv_cache`). ``continuous.frames`` index these frames.

        Returns final-norm hidden states ``[batch, frames, hidden]`` and the cache holding
        the frames' keys/values.
        """
        frames = ids.shape[1]
        positions = jnp.maximum(start + jnp.arange(frames)[None, :] - first[:, None], 0)
        mask = cache_mask(first, start, frames, cache.slots)
        x = self.embed_inputs(ids, continuous)
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
        audio_head = head[:, v.audio_offset : v.audio_offset + v.audio_size]
        return logits0, jnp.einsum("btsd,dv->btsv", hs, audio_head, preferred_element_type=jnp.float32)

    def loss(
        self,
        batch: Batch,
        continuous: Continuous | None = None,
        denominator: jax.Array | None = None,
        num_sources: int = 1,
    ):
        """``(loss, metric sums)`` of docs/model.md, Loss (see :mod:`bagpiper_jax.model.loss`);
        per-source sums over ``batch.source`` of ``num_sources`` mixture sources."""
        hidden = self.hidden_states(batch, continuous)
        return multistream_loss(
            hidden,
            self.lm_head[...],
            self.stream_emb[...],
            batch.ids,
            batch.loss_mask,
            batch.segment_ids,
            self.vocab,
            self.runtime.loss_chunk,
            self.rules,
            denominator,
            batch.source,
            num_sources,
        )
