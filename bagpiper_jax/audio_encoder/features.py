"""Whisper-style log-mel features for the audio tower (docs/audio_encoder.md), batched and jittable.

Per clip of ``n`` samples at 16 kHz: optional waveform normalisation (zero mean, unit
variance, eps 1e-7, over the clip's own samples), centred STFT (n_fft 400, hop 160,
periodic Hann, reflect padding at the clip's own edges), power spectrum, drop the last
frame (``n // 160`` frames remain), Slaney mel filters, ``log10(max(x, 1e-10))``, clamp
to (clip max − 8), ``(x + 4) / 4``. Clips longer than 300 s are truncated.

Each clip is computed exactly as if it were alone: padding a batch changes neither the
reflected edges, the normalisation statistics nor the clamp maximum. Padded frames are 0.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

SAMPLE_RATE = 16_000
N_FFT = 400
HOP = 160
MAX_SECONDS = 300
MAX_SAMPLES = MAX_SECONDS * SAMPLE_RATE
NORM_EPS = 1e-7
LOG_FLOOR = 1e-10
DYNAMIC_RANGE = 8.0


@functools.lru_cache(maxsize=4)
def mel_filters(n_mels: int = 128) -> np.ndarray:
    """Slaney mel filter bank, float32 ``[N_FFT // 2 + 1, n_mels]`` (librosa, 0–8 kHz)."""
    import librosa  # slow to import (numba); needed once per process for the filter bank

    bank = librosa.filters.mel(
        sr=SAMPLE_RATE,
        n_fft=N_FFT,
        n_mels=n_mels,
        fmin=0.0,
        fmax=SAMPLE_RATE / 2,
        htk=False,
        norm="slaney",
        dtype=np.float64,
    )
    return np.ascontiguousarray(bank.T, dtype=np.float32)


def _periodic_hann() -> np.ndarray:
    n = np.arange(N_FFT)
    return (0.5 - 0.5 * np.cos(2 * np.pi * n / N_FFT)).astype(np.float32)


def num_frames(samples):
    """Mel frames of a clip of ``samples`` samples (after the 300 s cut); ints or arrays."""
    return np.minimum(samples, MAX_SAMPLES) // HOP


def _reflect(index: jax.Array, length: jax.Array) -> jax.Array:
    """numpy ``mode="reflect"`` index folding (edge sample not repeated) into [0, length)."""
    period = jnp.maximum(2 * (length - 1), 1)
    folded = jnp.abs(index) % period
    return jnp.where(folded >= length, period - folded, folded)


def normalize_waveforms(waveforms: jax.Array, lengths: jax.Array) -> jax.Array:
    """Zero mean / unit variance over each clip's first ``lengths[b]`` samples.

    Args:
      waveforms: float ``[batch, samples]``; lengths: int ``[batch]``.
    Returns:
      float32 ``[batch, samples]``, padding set to 0.
    """
    valid = jnp.arange(waveforms.shape[1])[None, :] < lengths[:, None]
    count = jnp.maximum(lengths, 1)[:, None].astype(jnp.float32)
    mean = jnp.sum(jnp.where(valid, waveforms, 0.0), axis=1, keepdims=True) / count
    var = jnp.sum(jnp.where(valid, (waveforms - mean) ** 2, 0.0), axis=1, keepdims=True) / count
    return jnp.where(valid, (waveforms - mean) / jnp.sqrt(var + NORM_EPS), 0.0)


@functools.partial(jax.jit, static_argnames=("n_mels", "normalize"))
def log_mel(
    waveforms: jax.Array, lengths: jax.Array, n_mels: int = 128, normalize: bool = True
) -> tuple[jax.Array, jax.Array]:
    """Log-mel features of a right-padded batch of 16 kHz clips.

    Args:
      waveforms: float ``[batch, samples]``, clip ``b`` in its first ``lengths[b]`` samples
        (each clip needs at least 2 samples for reflect padding and 160 for one frame).
      lengths: int ``[batch]`` samples per clip.
      n_mels: mel bins (128 for Qwen3-Omni).
      normalize: apply the waveform normalisation first (Bagpiper does).
    Returns:
      features: float32 ``[batch, min(samples, 4_800_000) // 160, n_mels]``, zero past each
      clip's frames; frame_lengths: int32 ``[batch]`` = ``min(lengths, 4_800_000) // 160``.
    """
    waveforms = jnp.asarray(waveforms, jnp.float32)[:, :MAX_SAMPLES]
    lengths = jnp.minimum(jnp.asarray(lengths, jnp.int32), MAX_SAMPLES)
    if normalize:
        waveforms = normalize_waveforms(waveforms, lengths)
    frames = waveforms.shape[1] // HOP
    frame_lengths = lengths // HOP

    # Sample index of every STFT tap: frame t is centred on sample t * HOP.
    taps = jnp.arange(frames)[:, None] * HOP - N_FFT // 2 + jnp.arange(N_FFT)[None, :]
    index = _reflect(taps[None], lengths[:, None, None])  # [batch, frames, N_FFT]
    batch = waveforms.shape[0]
    windows = jnp.take_along_axis(waveforms, index.reshape(batch, -1), axis=1)
    windows = windows.reshape(batch, frames, N_FFT) * _periodic_hann()
    spectrum = jnp.fft.rfft(windows, axis=-1)
    power = jnp.real(spectrum) ** 2 + jnp.imag(spectrum) ** 2
    mel = jnp.matmul(power, mel_filters(n_mels), precision=jax.lax.Precision.HIGHEST)
    log_spec = jnp.log10(jnp.maximum(mel, LOG_FLOOR))

    valid = (jnp.arange(frames)[None, :] < frame_lengths[:, None])[:, :, None]
    clip_max = jnp.max(jnp.where(valid, log_spec, -jnp.inf), axis=(1, 2), keepdims=True)
    log_spec = (jnp.maximum(log_spec, clip_max - DYNAMIC_RANGE) + 4.0) / 4.0
    return jnp.where(valid, log_spec, 0.0), frame_lengths
