"""bagpiper-prepare on a manifest with broken entries: good ones prepared, odd audio
resampled/downmixed, broken ones skipped and reported with reasons; finished shards skipped."""

import json

import numpy as np
import soundfile as sf
from helpers import demo_config

from bagpiper_jax.data.pipeline import read_index
from bagpiper_jax.data.prepare import prepare_manifest
from bagpiper_jax.data.records import decode_record


def test_broken_entries_are_reported_and_good_ones_prepared(demo_root, tmp_path):
    t = np.arange(16000) / 16000
    sf.write(tmp_path / "good.wav", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000)
    stereo = np.stack([0.3 * np.sin(2 * np.pi * 300 * t[:8000] * 2)] * 2, axis=1).astype(np.float32)
    sf.write(tmp_path / "stereo8k.wav", stereo, 8000)
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x00not a wav at all")
    nan = np.full(16000, np.nan, np.float32)
    sf.write(tmp_path / "nan.wav", nan, 16000, subtype="FLOAT")
    lines = [
        {"id": "good", "task": "text_to_audio", "text1": "a sine tone", "audio1": "good.wav"},
        {"id": "odd", "task": "audio_to_text", "audio1": "stereo8k.wav", "text1": "a tone"},
        {"id": "missing", "task": "text_to_audio", "text1": "x", "audio1": "nowhere.wav"},
        {"id": "corrupt", "task": "audio_to_text", "audio1": "corrupt.wav", "text1": "x"},
        {"id": "empty", "task": "text_only", "text1": "   "},
        {"id": "nan", "task": "text_to_audio", "text1": "x", "audio1": "nan.wav"},
        {"id": "good", "task": "text_only", "text1": "same id again"},
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(map(json.dumps, lines)) + "\n{broken json\n")
    cfg = demo_config(demo_root, "data.examples_per_shard=4")
    out = tmp_path / "prepared"
    report = prepare_manifest(cfg, manifest, out, progress=False)
    assert report["prepared"] == 2 and report["skipped"] == 6
    assert report["by_reason"] == {
        "missing file": 1,
        "unreadable audio": 1,
        "empty text": 1,
        "non-finite samples": 1,
        "duplicate id": 1,
        "malformed line": 1,
    }
    for entry in report["inputs"]:
        assert entry["reason"] and entry["line"] >= 3
    index = read_index(out)
    assert [i for s in index["shards"] for i in s["ids"]] == ["good", "odd"]
    from array_record.python.array_record_module import ArrayRecordReader

    reader = ArrayRecordReader(str(out / index["shards"][0]["file"]))
    odd = decode_record(reader.read([1])[0])
    mel = odd.messages[0].array
    assert odd.messages[0].kind == "mel" and mel.shape == (100, 128)  # 0.5 s at 8 kHz -> 16 kHz, mono
    good = decode_record(reader.read([0])[0])
    assert good.messages[1].kind == "codes" and good.messages[1].array.shape[1] == 8
    # A re-run skips finished shards and gives the same index.
    before = (out / "index.json").read_text()
    (out / "shard-00000.array_record").chmod(0o444)
    assert prepare_manifest(cfg, manifest, out, progress=False)["prepared"] == 2
    assert (out / "index.json").read_text() == before


def test_encoder_token_counts_follow_the_towers_n_window(demo_root, tmp_path):
    """User audio occupies as many frames as the configured tower emits tokens: 13 per
    100-frame chunk at n_window 50, 25 per 200-frame chunk at the vLLM fork's 100."""
    import dataclasses

    import jax

    from bagpiper_jax.checkpoint.frozen_modules import load_tower_config, save_tower_params
    from bagpiper_jax.convert.hf_audio_encoder import abstract_params
    from bagpiper_jax.data.manifest import Example, Message
    from bagpiper_jax.data.preparer import Preparer

    base = demo_config(demo_root)
    tower = dataclasses.replace(load_tower_config(base.assets.audio_encoder), n_window=100, n_window_infer=400)
    save_tower_params(
        tmp_path / "tower", tower, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract_params(tower))
    )
    sf.write(tmp_path / "a.wav", np.sin(np.arange(48000) / 10).astype(np.float32), 16000)  # 3 s: 300 mel frames
    example = Example("a", "audio_to_text", (Message("user", "audio", str(tmp_path / "a.wav")),))
    frames = {}
    for name, overrides in (("50", []), ("100", [f"assets.audio_encoder={tmp_path}/tower", "data.piece_frames=400"])):
        preparer = Preparer(demo_config(demo_root, *overrides))
        frames[name] = preparer.prepare([example])[0][0].frames
        assert preparer.tokens_for(3000) == {"50": 390, "100": 375}[name]
    assert frames["50"] - frames["100"] == 39 - (25 + 13)
