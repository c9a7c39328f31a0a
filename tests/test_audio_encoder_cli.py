"""bagpiper-audio-features: one audio file -> float32 [tokens, output_dim]."""

import numpy as np
import pytest
import soundfile as sf
from audio_encoder_testing import hf_encode, tiny_hf_encoder

from bagpiper_jax.audio_encoder.config import output_lengths
from bagpiper_jax.audio_encoder.features import log_mel
from bagpiper_jax.audio_encoder.tower import tower_from_params
from bagpiper_jax.audio_io import load_audio
from bagpiper_jax.checkpoint.frozen_modules import save_tower
from bagpiper_jax.cli.audio_features import main
from bagpiper_jax.convert.hf_audio_encoder import import_hf


@pytest.fixture(scope="module")
def hf_model():
    return tiny_hf_encoder(seed=2)


@pytest.fixture(scope="module")
def encoder_dir(hf_model, tmp_path_factory):
    hf_dir = tmp_path_factory.mktemp("hf")
    hf_model.save_pretrained(hf_dir)
    return save_tower(tmp_path_factory.mktemp("encoder"), tower_from_params(*import_hf(hf_dir)))


@pytest.fixture(scope="module")
def stereo_wav(tmp_path_factory):
    """2.5 s of stereo noise at 44.1 kHz, the channels at different levels."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("audio") / "stereo.wav"
    sf.write(str(path), (rng.standard_normal((110_250, 2)) * [0.1, 0.3]).astype(np.float32), 44_100, subtype="FLOAT")
    return path


@pytest.mark.parametrize("normalize", [True, False])
def test_writes_hf_tower_output_of_the_file(encoder_dir, hf_model, stereo_wav, tmp_path, normalize):
    out = tmp_path / "features.npy"
    assert (
        main(["--encoder", str(encoder_dir), str(stereo_wav), str(out)] + ([] if normalize else ["--no-normalize"]))
        == 0
    )
    result = np.load(out)
    wav = load_audio(stereo_wav)  # 40_000 samples at 16 kHz -> 250 frames
    features = log_mel(wav, normalize=normalize)
    assert result.dtype == np.float32 and result.shape == (output_lengths(250), 16)
    expected = hf_encode(hf_model, [features])[0]
    np.testing.assert_allclose(result, expected, rtol=0, atol=1e-5)


def test_channel_option_picks_one_channel(encoder_dir, stereo_wav, tmp_path):
    paths = [tmp_path / f"{name}.npy" for name in ("left", "right")]
    for channel, path in enumerate(paths):
        assert (
            main(
                ["--encoder", str(encoder_dir), "--channel", str(channel), "--no-normalize", str(stereo_wav), str(path)]
            )
            == 0
        )
    left, right = (np.load(p) for p in paths)
    assert left.shape == right.shape and not np.allclose(left, right)


def test_bad_inputs_fail_with_a_message(encoder_dir, stereo_wav, tmp_path, capsys):
    empty = tmp_path / "empty.wav"
    sf.write(str(empty), np.zeros(0, np.float32), 16_000)
    short = tmp_path / "short.wav"
    sf.write(str(short), np.zeros(100, np.float32), 16_000)
    cases = [
        ([str(tmp_path / "missing.wav")], "missing.wav"),
        ([str(empty)], "has no samples"),
        ([str(short)], "fewer than one mel frame"),
        (["--channel", "5", str(stereo_wav)], "channel 5 does not exist"),
    ]
    for args, message in cases:
        assert main(["--encoder", str(encoder_dir), *args, str(tmp_path / "out.npy")]) == 1
        assert message in capsys.readouterr().err
    assert main(["--encoder", str(tmp_path), str(stereo_wav), str(tmp_path / "out.npy")]) == 1
    assert "cannot load audio encoder" in capsys.readouterr().err
    assert not (tmp_path / "out.npy").exists()
