"""Log-mel features vs HF WhisperFeatureExtractor(feature_size=128) and a float64 librosa
reference, normalisation and truncation."""

import numpy as np
import pytest

from bagpiper_jax.audio_encoder.features import MAX_SAMPLES, log_mel, normalize_waveform

LENGTHS = [201, 1600, 16_037, 48_159]  # shortest reflect-paddable clip, 0.1 s, ~1 s, ~3 s


def _clips(seed=3):
    """Noise-like clips with a slow loudness envelope, a different level each.

    float32 FFT rounding alone moves log-mel by up to ~1e-5 in low-power bins (~3e-5
    between the harmonics of a pure tone) in any implementation, HF's included. These
    clips are broadband and the seed is one where HF stays within 3e-6 of a float64
    reference, so the 1e-5 comparison measures our error, not HF's.
    """
    rng = np.random.default_rng(seed)
    clips = []
    for i, n in enumerate(LENGTHS):
        envelope = 1.0 + 0.8 * np.sin(2 * np.pi * 4 * np.arange(n) / 16_000 + i)
        clips.append((0.05 * (i + 1) * envelope * rng.standard_normal(n)).astype(np.float32))
    return clips


@pytest.mark.parametrize("normalize", [False, True])
def test_log_mel_matches_whisper_feature_extractor(normalize):
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor(feature_size=128)
    for clip in _clips():
        features = log_mel(clip, normalize=normalize)
        expected = extractor(
            clip, sampling_rate=16_000, padding="longest", truncation=False, do_normalize=normalize, return_tensors="np"
        )["input_features"][0].T
        assert features.shape == expected.shape == (len(clip) // 160, 128) and features.dtype == np.float32
        np.testing.assert_allclose(features, expected, rtol=0, atol=1e-5)


@pytest.mark.filterwarnings("ignore:n_fft=400 is too large")  # the 201-sample clip, still well defined
@pytest.mark.parametrize("normalize", [False, True])
def test_log_mel_matches_float64_librosa_reference(normalize):
    import librosa

    for clip in _clips():
        features = log_mel(clip, normalize=normalize)
        wav = clip.astype(np.float64)
        if normalize:
            wav = (wav - wav.mean()) / np.sqrt(wav.var() + 1e-7)
        power = (
            np.abs(
                librosa.stft(
                    wav, n_fft=400, hop_length=160, window="hann", center=True, pad_mode="reflect", dtype=np.complex128
                )[:, :-1]
            )
            ** 2
        )
        mel = librosa.filters.mel(sr=16_000, n_fft=400, n_mels=128, norm="slaney", dtype=np.float64) @ power
        log_spec = np.log10(np.maximum(mel, 1e-10))
        expected = (np.maximum(log_spec, log_spec.max() - 8) + 4) / 4
        np.testing.assert_allclose(features, expected.T, rtol=0, atol=1e-5)


def test_normalisation_gives_zero_mean_unit_variance():
    for clip in _clips():
        normed = normalize_waveform(clip)
        assert normed.dtype == np.float32
        np.testing.assert_allclose(normed.mean(), 0, atol=1e-5)
        np.testing.assert_allclose(normed.std(), 1, atol=1e-4)


def test_truncates_at_300_seconds():
    rng = np.random.default_rng(1)
    wav = (0.1 * rng.standard_normal(MAX_SAMPLES + 4_000)).astype(np.float32)
    # Over 300 s and exactly 300 s (the same samples): identical features.
    features = log_mel(wav)
    assert features.shape == (30_000, 128)
    np.testing.assert_array_equal(features, log_mel(wav[:MAX_SAMPLES]))
