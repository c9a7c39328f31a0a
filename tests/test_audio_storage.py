"""User audio stored as FLAC (prepared records) gives the audio tower's output of the
float32 path it replaces — log-mel of the float32 waveform — within the parity tolerance
(1e-5), at about half the bytes of float32 log-mel or less (bench/prepare.py measures a
corpus)."""

import numpy as np
import pytest
import soundfile as sf
from audio_encoder_testing import TINY, tiny_hf_encoder
from flax import nnx

from bagpiper_jax.audio_encoder.config import AudioEncoderConfig
from bagpiper_jax.audio_encoder.features import log_mel
from bagpiper_jax.audio_encoder.tower import tower_from_params
from bagpiper_jax.audio_io import decode_flac, encode_flac, load_audio
from bagpiper_jax.convert.hf_audio_encoder import from_hf_tensors


@pytest.fixture(scope="module")
def tower():
    """The tiny tower with every HF parameter randomised at std 0.3 (sensitive to its input)."""
    state = tiny_hf_encoder().state_dict()
    return tower_from_params(
        AudioEncoderConfig(**TINY), from_hf_tensors(AudioEncoderConfig(**TINY), lambda k: state[k].numpy())
    )


def clips(tmp_path) -> dict[str, np.ndarray]:
    """Speech-like noise and a tone as 16-bit 16 kHz files (read exactly as 16-bit values) and
    as a 44.1 kHz file (resampled: float values that are not 16-bit)."""
    rng = np.random.default_rng(0)
    t = np.arange(int(2.3 * 16_000)) / 16_000
    noise = 0.1 * (1 + np.sin(2 * np.pi * 3 * t)) * rng.standard_normal(len(t))
    tone = 0.3 * np.sin(2 * np.pi * 440 * t)
    sf.write(tmp_path / "noise.wav", noise, 16_000, subtype="PCM_16")
    sf.write(tmp_path / "tone.wav", tone, 16_000, subtype="PCM_16")
    sf.write(tmp_path / "hifi.wav", 0.2 * rng.standard_normal(int(2.3 * 44_100)), 44_100, subtype="PCM_24")
    return {name: load_audio(tmp_path / f"{name}.wav") for name in ("noise", "tone", "hifi")}


def tower_output(tower, mel: np.ndarray) -> np.ndarray:
    out, length = nnx.jit(lambda t, f, n: t(f, n))(tower, mel[None], np.array([len(mel)]))
    return np.asarray(out[0, : int(length[0])])


def test_flac_storage_keeps_the_tower_output(tower, tmp_path):
    for name, wav in clips(tmp_path).items():
        stored = decode_flac(encode_flac(wav))
        if name != "hifi":  # a 16-bit source round-trips exactly
            np.testing.assert_array_equal(stored, wav)
        assert np.abs(stored - wav).max() <= 2.0**-24
        want, got = tower_output(tower, log_mel(wav)), tower_output(tower, log_mel(stored))
        print(f"{name}: max |Δ tower output| {np.abs(got - want).max():.2e} (outputs up to {np.abs(want).max():.2f})")
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_flac_storage_costs_about_half_of_float32_log_mel_or_less(tmp_path):
    """Float32 log-mel is 51.2 kB per second. 16-bit white noise is FLAC's worst case among
    16-bit sources (~13 bits of entropy per sample at this level); structured audio
    compresses far better."""
    sizes = {name: len(encode_flac(wav)) / log_mel(wav).nbytes for name, wav in clips(tmp_path).items()}
    print({name: round(ratio, 3) for name, ratio in sizes.items()}, "of float32 log-mel")
    assert sizes["tone"] <= 0.25 and sizes["noise"] <= 0.55 and sizes["hifi"] <= 1.0
