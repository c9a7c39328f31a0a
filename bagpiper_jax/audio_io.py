"""Reading and writing audio files as 16 kHz mono float32, and compact in-memory FLAC.

Any sample rate soundfile can read (wav, flac, ogg) is resampled with ``soxr`` at
"VHQ" quality (band-limited, linear phase; the resampler librosa uses by default), and
multi-channel audio is averaged to mono or one channel is picked.

:func:`encode_flac` stores a float32 clip as FLAC bytes (how prepared records keep user
audio): 16-bit when every sample is a 16-bit value (``k / 32768``: what reading a 16-bit
file at 16 kHz gives) — then the round trip is exact — else 24-bit (an error of at most
2^-24 per sample, for resampled or float sources).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from bagpiper_jax.errors import BagpiperError

SAMPLE_RATE = 16_000


class AudioError(BagpiperError):
    """An audio file is missing, unreadable, empty or holds non-finite samples; names the
    file. ``kind`` is a short category for reports."""

    def __init__(self, message: str, kind: str = "unreadable audio"):
        super().__init__(message)
        self.kind = kind


def resample(wav: np.ndarray, from_rate: int, to_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Resamples float audio ``[samples]`` or ``[samples, channels]``."""
    if from_rate == to_rate:
        return wav
    return soxr.resample(wav, from_rate, to_rate, quality="VHQ").astype(np.float32)


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE, channel: int | None = None) -> np.ndarray:
    """Reads an audio file as float32 mono ``[samples]`` at ``sample_rate``.

    Args:
      channel: ``None`` averages all channels; an index picks that channel.
    Raises:
      AudioError: the file is missing/unreadable, has no samples, or has NaN/inf samples.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"audio file {path} does not exist", "missing file")
    try:
        wav, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise AudioError(f"cannot read audio file {path}: {e}") from e
    if wav.shape[0] == 0:
        raise AudioError(f"audio file {path} has no samples", "empty audio")
    if not np.isfinite(wav).all():
        raise AudioError(f"audio file {path} has NaN or infinite samples", "non-finite samples")
    if channel is None:
        wav = wav.mean(axis=1)
    elif not 0 <= channel < wav.shape[1]:
        raise AudioError(
            f"audio file {path} has {wav.shape[1]} channel(s); channel {channel} does not exist", "bad channel"
        )
    else:
        wav = wav[:, channel]
    return resample(np.ascontiguousarray(wav, dtype=np.float32), rate, sample_rate)


def save_audio(path: str | Path, wav: np.ndarray, sample_rate: int = SAMPLE_RATE):
    """Writes float audio ``[samples]`` as a 16-bit PCM wav (clipped to [-1, 1])."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(np.asarray(wav, np.float32), -1.0, 1.0), sample_rate, subtype="PCM_16")


def _quantized(wav: np.ndarray, bits: int) -> np.ndarray | None:
    """``round(wav * 2^(bits-1))`` as int32 when that is exact and in range, else None."""
    scaled = wav.astype(np.float64) * 2.0 ** (bits - 1)
    rounded = np.round(scaled)
    if not np.array_equal(scaled, rounded) or rounded.min() < -(2 ** (bits - 1)) or rounded.max() >= 2 ** (bits - 1):
        return None
    return rounded.astype(np.int32)


def encode_flac(wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """float32 ``[samples]`` -> FLAC bytes: 16-bit where exact (lossless), else 24-bit."""
    wav = np.asarray(wav, np.float32)
    buffer = io.BytesIO()
    pcm16 = _quantized(wav, 16)
    if pcm16 is not None:
        sf.write(buffer, pcm16.astype(np.int16), sample_rate, format="FLAC", subtype="PCM_16")
    else:  # libsndfile takes the top 24 bits of an int32
        pcm24 = np.clip(np.round(wav.astype(np.float64) * 2.0**23), -(2**23), 2**23 - 1).astype(np.int32)
        sf.write(buffer, pcm24 << 8, sample_rate, format="FLAC", subtype="PCM_24")
    return buffer.getvalue()


def decode_flac(data: bytes) -> np.ndarray:
    """FLAC bytes of :func:`encode_flac` -> float32 ``[samples]`` (the exact values encoded);
    ``AudioError`` for bytes that are not such FLAC."""
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            if f.subtype == "PCM_16":
                return f.read(dtype="int16").astype(np.float32) / np.float32(32768.0)
            return (f.read(dtype="int32") >> 8).astype(np.float32) / np.float32(2.0**23)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise AudioError(f"stored audio is not valid FLAC: {e}", "corrupt stored audio") from e
