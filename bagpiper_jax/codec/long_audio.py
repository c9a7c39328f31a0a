"""Long clips in bounded memory, with the codes of encoding them whole.

``XCodec.encode`` on a whole clip holds activations that grow with it — the acoustic
encoder's 64-channel full-rate maps, HuBERT's 512-channel first conv, and attention scores
quadratic in its frames: 22 GB for a 10-minute clip. :class:`LongClipEncoder` computes the
same function piece by piece:

- HuBERT's conv feature encoder runs on windows of ``window_frames`` frames (it has no
  padding, so a window of samples gives exactly its frames). Its first layer's GroupNorm
  takes statistics over the whole clip: two passes over that layer's output in windows
  give the mean and the variance first.
- The transformer runs over all frames (``[frames, hidden]`` is small), one layer per
  call, each computed for a block of query frames at a time against all keys, and the
  hidden states summed as they come.
- The DAC acoustic encoder runs on windows with a margin of its receptive field on each
  side (cut off afterwards); the first window starts at the clip's first sample and the
  last one is masked at its last, as the whole clip is.
- The semantic encoder runs over all frames; fusion and the quantizer, which work frame by
  frame, in windows.

Beyond the codec's params, memory is a few windows plus a handful of ``[frames, 768]``
arrays (README, Failures and recovery, has the figure for a 10-minute clip). The codes
equal those of the whole clip; the floating-point sums of the GroupNorm statistics and of
the windows' matmuls run in another order, which moves latents by ~1e-7 of their size.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bagpiper_jax.codec.buckets import bucket_frames
from bagpiper_jax.codec.xcodec import XCodec

ATTENTION_BUDGET = 96 << 20  # bytes of attention scores (and their softmax copies) per query block


def _conv_chain_extent(convs) -> tuple[int, int]:
    """(left, right) input samples a chain of ``Conv1d`` s reads around an output position."""
    left = right = 0
    jump = 1
    for conv in convs:
        left += conv.padding * jump
        right += ((conv.kernel_size - 1) * conv.dilation - conv.padding) * jump
        jump *= conv.stride
    return left, right


def acoustic_margin(model: XCodec) -> int:
    """Samples of context on each side of a window that the DAC encoder's output frames
    inside it can read: its receptive field rounded up to whole frames, plus one."""
    dac = model.acoustic_encoder
    convs = [dac.conv1]
    for block in dac.block:
        convs += [unit.conv1 for unit in (block.res_unit1, block.res_unit2, block.res_unit3)] + [block.conv1]
    convs.append(dac.conv2)
    hop = model.cfg.hop_length
    return (math.ceil(max(_conv_chain_extent(convs)) / hop) + 1) * hop


class LongClipEncoder:
    """Encodes one clip at a time in windows (see the module docstring).

    Args:
      model: the codec; its arrays are used where they live (no copy).
      window_frames: codec frames per window of the conv front ends and the quantizer.
      precision: matmul/conv precision, as in ``XCodecTokenizer``.
    """

    def __init__(self, model: XCodec, window_frames: int = 256, precision: str = "highest"):
        self.cfg, self.window = model.cfg, window_frames
        self.hop, self.pad = model.cfg.hop_length, model.cfg.hop_length // 2
        self.margin = acoustic_margin(model)
        fe = model.semantic_model.feature_extractor.conv_layers
        self.k0, self.s0 = fe[0].conv.kernel_size, fe[0].conv.stride
        self.feature_span = _conv_chain_extent([layer.conv for layer in fe])[1] + 1  # samples per frame
        self.heads = model.cfg.semantic.num_attention_heads
        graphdef, self._state = nnx.split(model)
        encoder = model.semantic_model.encoder
        layer_graph = nnx.graphdef(encoder.layers[0])
        self._layers = [nnx.state(layer) for layer in encoder.layers]

        def jit(fn, graph=graphdef, **kwargs):
            def run(state, *args):
                with jax.default_matmul_precision(precision):
                    return fn(nnx.merge(graph, state), *args)

            return jax.jit(run, **kwargs)

        def first_conv_sums(m, chunk, valid, mean):
            """Sums over a chunk's first ``valid`` frames of HuBERT's first conv: of the
            output and of its squared distance to ``mean`` (``[1, 1, channels]`` each)."""
            x = m.semantic_model.feature_extractor.conv_layers[0].conv(chunk[None, :, None])
            keep = (jnp.arange(x.shape[1]) < valid)[None, :, None]
            total = jnp.where(keep, x, 0).sum(1, keepdims=True)
            return total, jnp.where(keep, jnp.square(x - mean), 0).sum(1, keepdims=True)

        def features(m, window, mean, var):
            hubert = m.semantic_model
            x, _ = hubert.feature_extractor(window[None], jnp.full((1,), window.shape[0]), (mean, var))
            return hubert.feature_projection(x)[0]

        def layer(m, x, total, frames, query_block):
            x = m(x, frames, query_block)
            return x, total + x

        def semantic(m, total, valid):
            return m.encoder_semantic(m.semantic_model.encoder.mean(total[None]), valid[None])[0]

        self._first_conv_sums = jit(first_conv_sums)
        self._features = jit(features)
        self._embed = jit(lambda m, x, valid: m.semantic_model.encoder.embed(x[None], valid[None])[0])
        self._layer = jit(layer, layer_graph, static_argnums=4, donate_argnums=(1, 2))
        self._semantic = jit(semantic)
        self._acoustic = jit(lambda m, window, valid: m.acoustic_encoder(window[None], valid[None])[0][0])
        # Frames of context the frame-rate convolutions read on each side.
        self.embed_margin = encoder.pos_conv_embed.conv.padding
        sem = model.encoder_semantic
        convs = [sem.conv]
        for block in sem.conv_blocks:
            convs += [unit.conv1 for unit in block.res_units] + [block.conv]
        self.semantic_margin = max(_conv_chain_extent(convs))
        self._quantize = jit(
            lambda m, e_acoustic, e_semantic, frames, num_quantizers: m.quantize(
                m.fuse(e_acoustic[None], e_semantic[None]), frames, num_quantizers
            )[0],
            static_argnums=4,
        )
        self._shift = model.acoustic_shift

    def _query_block(self, frames: int) -> int:
        """Query frames per attention block: a power of two dividing ``frames`` whose scores
        (and their softmax copies) fit :data:`ATTENTION_BUDGET`."""
        fit = max(1, ATTENTION_BUDGET // (4 * 4 * self.heads * frames))
        return min(1 << (fit.bit_length() - 1), frames & -frames)

    def encode(self, wav: np.ndarray, num_quantizers: int) -> np.ndarray:
        """A mono float clip ``[samples]`` -> codes ``[frames, num_quantizers]`` int32."""
        frames = int(self.cfg.num_frames(len(wav)))
        padded = bucket_frames(frames)
        e_semantic = self._semantic_latents(wav, frames, padded)
        e_acoustic = self._acoustic_latents(wav, frames)
        w = self.window
        codes = np.zeros((frames, num_quantizers), np.int32)
        for f0 in range(0, frames, w):  # per frame: in windows
            block = [np.zeros((w, e.shape[1]), np.float32) for e in (e_acoustic, e_semantic)]
            n = min(w, frames - f0)
            block[0][:n], block[1][:n] = e_acoustic[f0 : f0 + n], e_semantic[f0 : f0 + n]
            out = self._quantize(self._state, *block, jnp.full((1,), n), num_quantizers)
            codes[f0 : f0 + n] = np.asarray(out)[:n]
        return codes

    def _semantic_latents(self, wav: np.ndarray, frames: int, padded: int) -> np.ndarray:
        """The semantic encoder's output ``[padded, 768]``: HuBERT's conv features and
        positional conv in windows, its transformer layer by layer over all frames, the
        semantic encoder in windows."""
        lengths = jnp.full((1,), frames)
        features = self._semantic_features(wav, frames, padded)
        x = jnp.asarray(self._in_windows(self._embed, features, frames, frames, self.embed_margin))[None]
        del features
        total, block = jnp.copy(x), self._query_block(padded)  # both are donated to each layer
        for layer in self._layers:
            x, total = self._layer(layer, x, total, lengths, block)
        del x
        total = np.asarray(total)[0]
        return self._in_windows(self._semantic, total, frames, frames, self.semantic_margin)

    def _in_windows(self, fn, signal: np.ndarray, length: int, frames: int, margin: int, hop: int = 1) -> np.ndarray:
        """Output frames ``[padded, channels]`` of ``fn(state, window, valid)`` — convolutions
        that zero their input past ``valid`` and take ``hop`` input steps per output frame —
        run on windows of ``window_frames`` frames with ``margin`` input steps of context on
        each side (cut off after). The first window starts at the input's start and the last
        is masked at its ``length``, as the whole input is, so every frame is the whole
        input's."""
        w, out = self.window, None
        for f0 in range(0, frames, w):
            start, end = max(0, f0 * hop - margin), min(length, (f0 + w) * hop + margin)
            window = np.zeros((w * hop + 2 * margin, *signal.shape[1:]), np.float32)
            window[: end - start] = signal[start:end]
            y = np.asarray(fn(self._state, window, np.int32(end - start)))
            if out is None:
                out = np.zeros((bucket_frames(frames), *y.shape[1:]), np.float32)
            first, n = f0 - start // hop, min(w, frames - f0)
            out[f0 : f0 + n] = y[first : first + n]
        return out

    def _semantic_features(self, wav: np.ndarray, frames: int, padded: int) -> np.ndarray:
        """HuBERT's projected conv features ``[padded, hidden]`` of the whole clip, in windows."""
        w, hop, span = self.window, self.hop, self.feature_span
        total = len(wav) + 2 * self.pad
        windows = -(-frames // w)
        signal = np.zeros(windows * w * hop + span, np.float32)  # the padded clip, zeros after it
        signal[self.pad : self.pad + len(wav)] = wav
        # The first layer's GroupNorm statistics over its valid frames, two passes of windows.
        first_frames = (total - self.k0) // self.s0 + 1
        per_chunk = w * hop // self.s0
        chunk_samples = (per_chunk - 1) * self.s0 + self.k0

        def sums(mean, which):
            total = 0
            for c in range(-(-first_frames // per_chunk)):
                chunk = signal[c * per_chunk * self.s0 :][:chunk_samples]
                chunk = np.pad(chunk, (0, chunk_samples - len(chunk)))
                total = (
                    total
                    + self._first_conv_sums(self._state, chunk, min(per_chunk, first_frames - c * per_chunk), mean)[
                        which
                    ]
                )
            return total / first_frames

        mean = sums(jnp.zeros((1, 1, 1), jnp.float32), 0)
        var = sums(mean, 1)
        window_samples = (w - 1) * hop + span
        out = np.zeros((padded, self.cfg.semantic.hidden_size), np.float32)
        for i in range(windows):
            block = self._features(self._state, signal[i * w * hop :][:window_samples], mean, var)
            out[i * w : min((i + 1) * w, frames)] = np.asarray(block)[: frames - i * w]
        return out

    def _acoustic_latents(self, wav: np.ndarray, frames: int) -> np.ndarray:
        """The DAC encoder's latents ``[padded, hidden]`` of the whole clip, in windows."""
        shift = int(self._shift(len(wav), frames))
        signal = np.zeros(len(wav) + 2 * shift, np.float32)
        signal[shift : shift + len(wav)] = wav
        return self._in_windows(self._acoustic, signal, len(signal), frames, self.margin, self.hop)
