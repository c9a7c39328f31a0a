"""Host-side XCodec tokenizer: length buckets, fixed batch sizes, jitted encode/decode,
optionally data-parallel over a device mesh.

Clips are grouped by bucket (a padded length of the form ``m * 2**e`` hops with ``m`` in
[8, 16), so at most ~12.5% padding and a logarithmic number of compiled shapes), padded
to ``batch_size`` rows and encoded in one jitted call per group. Results are identical to
encoding each clip alone (``XCodec.encode`` neutralises padding layer by layer). Clips
longer than ``long_clip_frames`` are encoded one at a time in bounded memory, with the
same codes (:class:`~bagpiper_jax.codec.long_audio.LongClipEncoder`).

    tok = XCodecTokenizer(load_codec("codec_params/"))   # bagpiper_jax.checkpoint.frozen_modules
    codes = tok.encode([wav_a, wav_b])        # list of int32 [frames_i, 8]
    wavs = tok.decode(codes)                  # list of float32 [frames_i * 320]
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from bagpiper_jax.codec.buckets import bucket_frames
from bagpiper_jax.codec.config import XCodecConfig
from bagpiper_jax.codec.long_audio import LongClipEncoder
from bagpiper_jax.codec.xcodec import XCodec
from bagpiper_jax.sharding import Rules, batch_shards, logical_to_spec, state_shardings

BATCH = "activation_batch"


def check_codes(codes: np.ndarray, cfg: XCodecConfig, name: str = "codes", num_quantizers: int | None = None):
    """Raises ``ValueError`` naming ``name`` unless ``codes`` is an integer ``[frames > 0, n]``
    array with ``1 <= n <= cfg.num_quantizers`` (``n == num_quantizers`` when given) and
    every code in ``[0, cfg.codebook_size)``."""
    n = codes.shape[-1] if codes.ndim else 0
    if codes.ndim != 2 or codes.shape[0] == 0 or not 1 <= n <= cfg.num_quantizers or num_quantizers not in (None, n):
        want = num_quantizers if num_quantizers is not None else f"1..{cfg.num_quantizers}"
        raise ValueError(f"{name} must be [frames > 0, {want}], got shape {codes.shape}")
    if not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"{name} must be integers, got {codes.dtype}")
    if codes.min() < 0 or codes.max() >= cfg.codebook_size:
        raise ValueError(f"{name} must lie in [0, {cfg.codebook_size}), got [{codes.min()}, {codes.max()}]")


class XCodecTokenizer:
    """Batched, bucketed, jitted XCodec encode/decode.

    Args:
      model: the codec.
      batch_size: rows per jitted call (a multiple of the mesh's batch-axis size).
      mesh, rules: when given, batches are sharded over the mesh axes that the logical
        axis ``activation_batch`` maps to in ``rules`` and the codec is replicated.
      precision: matmul/conv precision inside the jitted calls. ``"highest"`` (default)
        keeps fp32 accuracy on GPU/TPU too, so codes match the fp32 reference;
        ``"default"`` is faster there (TF32 / bf16 passes) but may change codes.
      long_clip_frames: clips of more frames (default 30 s) are encoded alone, in windows
        of ``window_frames`` frames, on the first device.
    """

    def __init__(
        self,
        model: XCodec,
        batch_size: int = 8,
        mesh: Mesh | None = None,
        rules: Rules = (),
        precision: str = "highest",
        long_clip_frames: int = 1500,
        window_frames: int = 256,
    ):
        self.cfg = model.cfg
        self.batch_size = batch_size
        self.long_clip_frames = long_clip_frames
        self._long = LongClipEncoder(model, window_frames, precision)  # before the state is put on the mesh
        graphdef, state = nnx.split(model)
        if mesh is None:
            batch_sharding = state_sharding = None
        else:
            spec = logical_to_spec((BATCH,), rules)
            shards = batch_shards(mesh, rules)
            if batch_size % shards:
                raise ValueError(f"batch_size {batch_size} is not a multiple of the {shards} batch shards of the mesh")
            batch_sharding = NamedSharding(mesh, spec)
            state_sharding = state_shardings(state, mesh, rules)
            state = jax.device_put(state, state_sharding)
        self._state = state
        self._batch_sharding = batch_sharding

        def encode(state, wav, lengths, num_quantizers):
            with jax.default_matmul_precision(precision):
                return nnx.merge(graphdef, state).encode(wav, lengths, num_quantizers)

        def decode(state, codes, frames):
            with jax.default_matmul_precision(precision):
                return nnx.merge(graphdef, state).decode(codes, frames)

        shardings = {} if mesh is None else {"in_shardings": (state_sharding, batch_sharding, batch_sharding)}
        self._encode = jax.jit(encode, static_argnums=3, **shardings)
        self._decode = jax.jit(decode, **shardings)

    @property
    def hop_length(self) -> int:
        return self.cfg.hop_length

    def _groups(self, sizes: Sequence[int]) -> list[tuple[int, list[int]]]:
        """(bucket frames, item indices) batches: items grouped by bucket, then chunked."""
        by_bucket = defaultdict(list)
        for i, n in enumerate(sizes):
            by_bucket[bucket_frames(n)].append(i)
        return [
            (bucket, idx[j : j + self.batch_size])
            for bucket, idx in sorted(by_bucket.items())
            for j in range(0, len(idx), self.batch_size)
        ]

    def _rows(self, rows: list[np.ndarray], lengths: list[int], width: int, dtype) -> tuple[np.ndarray, np.ndarray]:
        """Stacks rows zero-padded to ``width``; fills the batch with copies of row 0."""
        batch = np.zeros((self.batch_size, width) + rows[0].shape[1:], dtype)
        lens = np.full((self.batch_size,), lengths[0], np.int32)
        for r in range(self.batch_size):
            j = r if r < len(rows) else 0
            batch[r, : lengths[j]] = rows[j]
            lens[r] = lengths[j]
        return batch, lens

    def _put(self, *arrays):
        if self._batch_sharding is None:
            return arrays
        return tuple(jax.device_put(a, self._batch_sharding) for a in arrays)

    def encode(self, wavs: Sequence[np.ndarray], bandwidth: float | None = None) -> list[np.ndarray]:
        """Mono float clips ``[samples_i]`` at ``cfg.sample_rate`` -> codes
        ``[frames_i, num_quantizers]`` int32 each (``num_quantizers`` from ``bandwidth``)."""
        num_q = self.cfg.quantizers_for_bandwidth(bandwidth)
        wavs = [np.asarray(w, np.float32) for w in wavs]
        minimum = self.cfg.min_samples
        for i, w in enumerate(wavs):
            if w.ndim != 1:
                raise ValueError(f"clip {i} must be mono [samples], got shape {w.shape}")
            if w.shape[0] < minimum:
                raise ValueError(f"clip {i} has {w.shape[0]} samples; at least {minimum} are needed for one frame")
            if not np.isfinite(w).all():
                raise ValueError(f"clip {i} has NaN or infinite samples")
        hop = self.hop_length
        out: list[np.ndarray | None] = [None] * len(wavs)
        short = []
        for i, w in enumerate(wavs):
            if self.cfg.num_frames(w.shape[0]) > self.long_clip_frames:
                out[i] = self._long.encode(w, num_q)
            else:
                short.append(i)
        for bucket, group in self._groups([-(-wavs[i].shape[0] // hop) for i in short]):
            idx = [short[j] for j in group]
            rows = [wavs[i] for i in idx]
            wav, lengths = self._rows(rows, [r.shape[0] for r in rows], bucket * hop, np.float32)
            codes, frames = self._encode(self._state, *self._put(wav, lengths), num_q)
            codes, frames = np.asarray(codes), np.asarray(frames)
            for r, i in enumerate(idx):
                out[i] = codes[r, : frames[r]]
        return out

    def decode(self, codes: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Codes ``[frames_i, n]`` (``1 <= n <= num_quantizers``, one ``n`` for all) ->
        audio ``[frames_i * hop]`` float32 each. Raises ``ValueError`` for bad codes."""
        codes = [np.asarray(c) for c in codes]
        if not codes:
            return []
        for i, c in enumerate(codes):
            check_codes(c, self.cfg, f"codes {i}", num_quantizers=codes[0].shape[-1])
        out: list[np.ndarray | None] = [None] * len(codes)
        for bucket, idx in self._groups([c.shape[0] for c in codes]):
            rows = [codes[i].astype(np.int32) for i in idx]
            batch, frames = self._rows(rows, [r.shape[0] for r in rows], bucket, np.int32)
            wav, samples = self._decode(self._state, *self._put(batch, frames))
            wav, samples = np.asarray(wav), np.asarray(samples)
            for r, i in enumerate(idx):
                out[i] = wav[r, : samples[r]]
        return out
