"""Every command prints the library's own errors on one line, ``bagpiper-<cmd>: <message>``,
and exits 1; ``--debug`` raises them with the traceback instead."""

import pytest
from helpers import TINY

from bagpiper_jax.cli import audio_features, convert, generate, prepare, train
from bagpiper_jax.cli import eval as eval_cli
from bagpiper_jax.config import ConfigError


@pytest.mark.parametrize(
    "main, argv, message",
    [
        (train.main, ["--config", str(TINY), "train.stepz=3"], "bagpiper-train: unknown config key 'train.stepz'"),
        (
            prepare.main,
            ["--config", str(TINY), "--manifest", "x.jsonl", "--out", "o"],
            "bagpiper-prepare: assets.tokenizer must name a tokenizer.json",
        ),
        (
            convert.main,
            ["hf-xcodec", "--hf", "nowhere", "--out", "o"],
            "bagpiper-convert hf-xcodec: nowhere/config.json",
        ),
        (
            audio_features.main,
            ["--encoder", "e", "missing.wav", "o.npy"],
            "bagpiper-audio-features: audio file missing.wav does not exist",
        ),
        (
            generate.main,
            ["--checkpoint", "nowhere", "--config", str(TINY), "--text", "a", "--out", "o.wav"],
            "bagpiper-generate: checkpoint",
        ),
        (
            eval_cli.main,
            ["--checkpoint", "nowhere", "--config", str(TINY), "--eval", "missing.jsonl"],
            "bagpiper-eval: eval manifest missing.jsonl not found",
        ),
    ],
)
def test_errors_are_one_line(main, argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.jsonl").write_text('{"id": "a", "task": "text_only", "text1": "hi"}\n')
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1 and "Traceback" not in err, err


def test_debug_shows_the_traceback():
    with pytest.raises(ConfigError, match="unknown config key 'train.stepz'"):
        train.main(["--config", str(TINY), "train.stepz=3", "--debug"])


def test_enforce_modality_flag_is_checked(capsys):
    """``bagpiper-generate --enforce-modality`` takes a comma-separated list of text/audio;
    anything else is a usage error naming the flag, before any checkpoint is read."""
    with pytest.raises(SystemExit) as exit_info:
        generate.main(
            ["--checkpoint", "c", "--config", str(TINY), "--audio", "a.wav", "--enforce-modality", "text,video"]
        )
    assert exit_info.value.code == 2
    assert "--enforce-modality: modalities must be a comma-separated list of text/audio" in capsys.readouterr().err
