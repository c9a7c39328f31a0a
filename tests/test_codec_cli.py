"""``bagpiper-codec encode/decode`` on files, and its errors for bad inputs."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import soundfile as sf
from test_codec_hf import make_tiny_hf

from bagpiper_jax.cli.codec import main
from bagpiper_jax.convert.commands import convert_hf_xcodec as convert


@pytest.fixture(scope="module")
def codec_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("codec_cli")
    make_tiny_hf(root / "hf", seed=2)
    return convert(root / "hf", root / "codec")


def test_encode_decode_files(codec_dir, tmp_path):
    rng = np.random.default_rng(0)
    stereo = (0.1 * rng.standard_normal((5512, 2))).astype(np.float32)  # 0.25 s at 22.05 kHz
    sf.write(str(tmp_path / "in.wav"), stereo, 22050, subtype="FLOAT")
    assert (
        main(
            [
                "encode",
                "--codec",
                str(codec_dir),
                "--bandwidth",
                "2",
                "--channel",
                "1",
                str(tmp_path / "in.wav"),
                str(tmp_path / "codes.npy"),
            ]
        )
        == 0
    )
    codes = np.load(tmp_path / "codes.npy")
    assert codes.dtype == np.int32 and codes.shape == (13, 4)  # 4000 samples at 16 kHz (HF: 13 frames), 2 kbps
    assert codes.min() >= 0 and codes.max() < 1024
    assert main(["decode", "--codec", str(codec_dir), str(tmp_path / "codes.npy"), str(tmp_path / "out.wav")]) == 0
    wav, rate = sf.read(str(tmp_path / "out.wav"))
    assert rate == 16000 and wav.shape == (13 * 320,)


def test_errors_name_the_input(codec_dir, tmp_path, capsys):
    (tmp_path / "junk.wav").write_bytes(b"not audio")
    sf.write(str(tmp_path / "empty.wav"), np.zeros((0,), np.float32), 16000)
    sf.write(str(tmp_path / "short.wav"), np.zeros((40,), np.float32), 16000)
    np.save(tmp_path / "flat.npy", np.zeros((10,), np.int32))
    np.save(tmp_path / "range.npy", np.full((10, 8), 1024, np.int32))
    np.save(tmp_path / "float.npy", np.zeros((10, 8), np.float32))
    (tmp_path / "junk.npy").write_bytes(b"nope")
    cases = [
        (["encode", "junk.wav"], "cannot read audio"),
        (["encode", "empty.wav"], "no samples"),
        (["encode", "short.wav"], "at least"),
        (["encode", "--channel", "3", "short.wav"], "channel 3"),
        (["decode", "flat.npy"], "shape (10,)"),
        (["decode", "range.npy"], "[0, 1024)"),
        (["decode", "float.npy"], "integers"),
        (["decode", "junk.npy"], "cannot read codes"),
    ]
    for (command, *rest), message in cases:
        *flags, name = rest
        assert main([command, "--codec", str(codec_dir), *flags, str(tmp_path / name), str(tmp_path / "out")]) == 1
        err = capsys.readouterr().err
        assert message in err and name in err, (name, err)
