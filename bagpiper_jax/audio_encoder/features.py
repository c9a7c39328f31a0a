"""Whisper-style log-mel features for the audio tower (docs/audio_encoder.md), on the host.

Per clip of ``n`` samples at 16 kHz: optional waveform normalisation (zero mean, unit
variance, eps 1e-7, over the clip's own samples), centred STFT (n_fft 400, hop 160,
periodic Hann, reflect padding at the clip's own edges), power spectrum, drop the last
frame (``n // 160`` frames remain), Slaney mel filters, ``log10(max(x, 1e-10))``, clamp
to (clip max − 8), ``(x + 4) / 4``. Clips longer than 300 s are truncated.

Features are computed where the audio is decoded: in data preparation, in the training
input's workers (user audio is stored compressed, see ``audio_io.encode_flac``) and for
generation prompts. numpy keeps them off the accelerator and free of recompiles.
"""

from __future__ import annotations

import functools

import numpy as np
from threadpoolctl import ThreadpoolController

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


@functools.cache
def _blas() -> ThreadpoolController:
    return ThreadpoolController()


def _periodic_hann() -> np.ndarray:
    n = np.arange(N_FFT)
    return (0.5 - 0.5 * np.cos(2 * np.pi * n / N_FFT)).astype(np.float32)


def num_frames(samples):
    """Mel frames of a clip of ``samples`` samples (after the 300 s cut); ints or arrays."""
    return np.minimum(samples, MAX_SAMPLES) // HOP


def normalize_waveform(wav: np.ndarray) -> np.ndarray:
    """Zero mean / unit variance (eps 1e-7) over the clip's samples, float32."""
    mean = wav.mean(dtype=np.float32)
    var = np.square(wav - mean).mean(dtype=np.float32)
    return ((wav - mean) / np.sqrt(var + np.float32(NORM_EPS))).astype(np.float32)


def log_mel(wav: np.ndarray, n_mels: int = 128, normalize: bool = True) -> np.ndarray:
    """Log-mel features of one 16 kHz clip (host-side numpy, float32 arithmetic).

    Args:
      wav: float ``[samples]`` (at least 2 samples for reflect padding, 160 for one frame).
      n_mels: mel bins (128 for Qwen3-Omni).
      normalize: apply the waveform normalisation first (Bagpiper does).
    Returns:
      float32 ``[min(samples, 4_800_000) // 160, n_mels]``.
    """
    wav = np.asarray(wav, np.float32)[:MAX_SAMPLES]
    if normalize:
        wav = normalize_waveform(wav)
    frames = len(wav) // HOP
    padded = np.pad(wav, N_FFT // 2, mode="reflect")  # frame t is centred on sample t * HOP
    windows = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP][:frames] * _periodic_hann()
    spectrum = np.fft.rfft(windows, axis=-1)
    power = (spectrum.real**2 + spectrum.imag**2).astype(np.float32)
    # One BLAS thread: features are computed in data workers, one per core; BLAS threads on
    # top of them stall on these small matrices (20x slower on a busy 2-core host).
    with _blas().limit(limits=1, user_api="blas"):
        mel = power @ mel_filters(n_mels)
    log_spec = np.log10(np.maximum(mel, np.float32(LOG_FLOOR)))
    if frames:
        log_spec = np.maximum(log_spec, log_spec.max() - np.float32(DYNAMIC_RANGE))
    return ((log_spec + 4.0) / 4.0).astype(np.float32)
