"""The Qwen3-Omni audio tower (HF ``Qwen3OmniMoeAudioEncoder``) in Flax NNX, batched.

A batch of clips of different lengths runs with static shapes: features ``[batch, frames,
mels]`` (frames padded to a bucket) plus per-clip frame counts. Per clip, with chunks of
``config.chunk_frames`` = 2 × n_window mel frames (100 for Qwen3-Omni's n_window 50, 200
for the vLLM fork's 100) giving ``config.tokens_per_chunk`` tokens (13, 25):

1. split into chunks; three Conv2d(3×3, stride 2) + GELU per chunk; flatten channel-major →
   Linear (no bias) to d_model; add sinusoidal positions that restart in every chunk;
2. keep the clip's valid tokens (``tokens_per_chunk`` per full chunk + the conv length of
   the tail) — they form a prefix of the clip's token row, so "dropping padded positions"
   is a length;
3. pre-LN layers with bidirectional attention inside windows of ``config.window_tokens``
   tokens (n_window_infer // chunk_frames chunks) of the clip (never crossing clips), run
   as dense attention on ``[windows, window_tokens]`` blocks (only the attention is padded
   to whole windows);
4. LayerNorm → Linear → GELU → Linear to output_dim.

Nothing crosses an attention window (``config.window_frames`` mel frames: 800 for 50 / 800,
400 for 100 / 400), so a clip's output is the concatenation of its windows' outputs encoded
as separate rows, given each row's whole-clip length (``clip_lengths``, see below): callers
may batch windows of different clips as rows to cut padding.

Each clip gives exactly what HF gives for that clip encoded on its own. HF pads all chunks
of a call to its longest chunk, which changes the last tokens of a clip shorter than one
chunk (its 2nd and 3rd convs read activations computed from that padding where, alone,
they read their own zero padding), so in a call mixing such a clip with longer ones HF's
output depends on the batch-mates; ours never does. For the same reason a row that is a
window of a longer clip needs that clip's length in ``clip_lengths`` when the row itself
is shorter than one chunk.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bagpiper_jax.audio_encoder.config import AudioEncoderConfig, conv_out_length, output_lengths
from bagpiper_jax.audio_encoder.layers import Conv3x3Stride2, Dense, EncoderLayer, LayerNorm, gelu

MAX_TIMESCALE = 10_000


@functools.lru_cache(maxsize=8)
def sinusoid_positions(length: int, channels: int) -> np.ndarray:
    """HF ``SinusoidsPositionEmbedding`` table, float32 ``[length, channels]`` = [sin | cos]."""
    increment = np.log(MAX_TIMESCALE) / (channels // 2 - 1)
    inv_timescales = np.exp(np.float32(-increment) * np.arange(channels // 2, dtype=np.float32))
    scaled_time = np.arange(length, dtype=np.float32)[:, None] * inv_timescales[None, :]
    return np.concatenate([np.sin(scaled_time), np.cos(scaled_time)], axis=1).astype(np.float32)


def _keep_first(x: jax.Array, lengths: jax.Array) -> jax.Array:
    """Zeroes ``x [n, time, ...]`` at time steps ``>= lengths[n]``."""
    keep = jnp.arange(x.shape[1])[None, :] < lengths[:, None]
    return jnp.where(keep.reshape(*keep.shape, *(1,) * (x.ndim - 2)), x, 0)


class AudioTower(nnx.Module):
    """Qwen3-Omni audio tower; parameter names follow the HF modules.

    Args:
      config: tower hyper-parameters.
      dtype: compute dtype (parameters are cast at use; LayerNorm statistics and the
        attention softmax stay float32).
      param_dtype: dtype of the parameters.
    """

    def __init__(self, config: AudioEncoderConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.dtype = dtype
        d, channels = config.d_model, config.downsample_hidden_size
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.conv2d1 = Conv3x3Stride2(1, channels, **kw)
        self.conv2d2 = Conv3x3Stride2(channels, channels, **kw)
        self.conv2d3 = Conv3x3Stride2(channels, channels, **kw)
        self.conv_out = Dense((channels * config.conv_freq_bins,), (d,), ("conv_in",), ("embed",), use_bias=False, **kw)

        @nnx.split_rngs(splits=config.encoder_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def stacked_layers(layer_rngs: nnx.Rngs) -> EncoderLayer:
            return EncoderLayer(config, dtype=dtype, param_dtype=param_dtype, rngs=layer_rngs)

        self.layers = stacked_layers(rngs)
        self.ln_post = LayerNorm(d, dtype=dtype, param_dtype=param_dtype)
        self.proj1 = Dense((d,), (d,), ("embed",), ("mlp",), **kw)
        self.proj2 = Dense((d,), (config.output_dim,), ("mlp",), ("continuous",), **kw)

    def embed_chunks(self, features: jax.Array, lengths: jax.Array, clip_lengths: jax.Array) -> jax.Array:
        """Conv front end.

        Args:
          features: float ``[batch, chunks * chunk_frames, mels]``; lengths, clip_lengths:
            int32 ``[batch]`` frames of the row and of the clip it belongs to.
        Returns:
          ``[batch, chunks * tokens_per_chunk, d_model]`` token embeddings with per-chunk positions.
        """
        cfg = self.config
        batch, frames, mels = features.shape
        chunks = frames // cfg.chunk_frames
        x = _keep_first(features, lengths).reshape(batch * chunks, cfg.chunk_frames, mels, 1)
        # HF pads a clip's chunks to its longest chunk (one chunk, or the whole clip when it
        # is shorter); conv activations past that extent are the next conv's zero padding.
        extent = jnp.repeat(jnp.minimum(clip_lengths, cfg.chunk_frames), chunks)
        for conv in (self.conv2d1, self.conv2d2):
            extent = (extent + 1) // 2
            x = _keep_first(gelu(conv(x)), extent)
        x = gelu(self.conv2d3(x))  # [batch * chunks, tokens_per_chunk (time), freq, channels]
        x = x.transpose(0, 1, 3, 2).reshape(batch * chunks, cfg.tokens_per_chunk, -1)  # channel-major
        x = self.conv_out(x) + sinusoid_positions(cfg.tokens_per_chunk, cfg.d_model).astype(self.dtype)
        return x.reshape(batch, chunks * cfg.tokens_per_chunk, cfg.d_model)

    def __call__(
        self, features: jax.Array, lengths: jax.Array, clip_lengths: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """Encodes a right-padded batch of log-mel clips.

        Args:
          features: float ``[batch, frames, mels]``; frames past a clip's length are ignored.
          lengths: int ``[batch]`` mel frames per row (clipped to ``frames``).
          clip_lengths: int ``[batch]`` frames of the whole clip a row is a window of
            (default ``lengths``: every row is a whole clip).
        Returns:
          outputs: ``[batch, tokens_per_chunk * ceil(frames / chunk_frames), output_dim]`` in the compute dtype, zero
          past each clip's tokens; token_lengths: int32 ``[batch]`` (docs/audio_encoder.md formula).
        """
        cfg = self.config
        frames = features.shape[1]
        chunks = -(-frames // cfg.chunk_frames)
        lengths = jnp.minimum(jnp.asarray(lengths, jnp.int32), frames)
        clip_lengths = lengths if clip_lengths is None else jnp.asarray(clip_lengths, jnp.int32)
        features = jnp.pad(features, ((0, 0), (0, chunks * cfg.chunk_frames - frames), (0, 0)))
        x = self.embed_chunks(features.astype(self.dtype), lengths, clip_lengths)
        tokens = x.shape[1]
        token_lengths = output_lengths(lengths, cfg)

        graphdef, layer_state = nnx.split(self.layers)

        def layer_step(h, state):
            return nnx.merge(graphdef, state)(h, token_lengths), None

        x, _ = jax.lax.scan(layer_step, x, layer_state)
        x = self.proj2(gelu(self.proj1(self.ln_post(x))))
        valid = jnp.arange(tokens)[None, :] < token_lengths[:, None]
        return jnp.where(valid[:, :, None], x, 0), token_lengths


def abstract_tower(config: AudioEncoderConfig, dtype=jnp.float32) -> AudioTower:
    """The tower with ``jax.ShapeDtypeStruct`` parameters (no memory allocated)."""
    return nnx.eval_shape(lambda: AudioTower(config, dtype=dtype, rngs=nnx.Rngs(0)))


def tower_from_params(config: AudioEncoderConfig, params: dict, dtype=jnp.float32) -> AudioTower:
    """A tower computing in ``dtype`` holding ``params`` (nested dict of arrays, the layout of
    ``nnx.to_pure_dict(nnx.state(tower))``, as :func:`hf_import.import_hf` returns)."""
    graphdef, state = nnx.split(abstract_tower(config, dtype))
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state)


def encode(
    tower: AudioTower, features: jax.Array, lengths: jax.Array, clip_lengths: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """The frozen encoder inside a train step: ``tower(features, lengths, clip_lengths)``
    with the outputs under ``stop_gradient``, so no gradient reaches (or is computed for)
    the tower.

    Returns ``(outputs [batch, tokens, output_dim], token_lengths [batch])``.
    """
    outputs, token_lengths = tower(features, lengths, clip_lengths)
    return jax.lax.stop_gradient(outputs), token_lengths


def bucket_frames(frames: int, step: int = 800) -> int:
    """Static frame count for a batch whose longest clip has ``frames`` frames: rounded up
    to a multiple of ``step`` (800 frames = 8 s) to bound recompiles. Any frame count
    works; multiples of the chunk (100 or 200 frames) waste no conv work."""
    return max(1, -(-frames // step)) * step


def parameter_count(config: AudioEncoderConfig) -> int:
    """Parameters of the tower from the config alone (the HF module has the same)."""
    d, c, ffn, layers = config.d_model, config.downsample_hidden_size, config.encoder_ffn_dim, config.encoder_layers
    convs = (9 * c + c) + 2 * (9 * c * c + c)
    conv_out = c * conv_out_length(config.num_mel_bins) * d
    layer = 4 * (d * d + d) + 2 * (2 * d) + (d * ffn + ffn) + (ffn * d + d)
    head = 2 * d + (d * d + d) + (d * config.output_dim + config.output_dim)
    return convs + conv_out + layers * layer + head
