"""bagpiper-prepare: broken entries reported and good ones prepared, manifests in parts over
several processes, repeated ids across parts, unreadable parts, re-runs, and migrating a
directory of the previous format; user audio counted in the configured tower's tokens."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest
import soundfile as sf
from array_record.python.array_record_module import ArrayRecordWriter
from helpers import demo_config

from bagpiper_jax.audio_io import decode_flac
from bagpiper_jax.checkpoint.frozen_modules import load_tower_config, save_tower_params
from bagpiper_jax.convert.hf_audio_encoder import abstract_params
from bagpiper_jax.data.demo import remove_other_build
from bagpiper_jax.data.manifest import Example, Message, manifest_parts, plan_units
from bagpiper_jax.data.prepare import prepare_manifest
from bagpiper_jax.data.preparer import Preparer
from bagpiper_jax.data.records import encode_record
from bagpiper_jax.data.shards import DataError, migrate_v1, read_index, read_records


def all_records(out) -> dict[str, list]:
    """Every kept record of a prepared directory by shard, as (id, messages' arrays)."""
    index = read_index(out)
    dropped = set(index.duplicates().tolist())
    position, kept = 0, {}
    for shard in index.shards:
        for r in read_records(index.records_path(shard), list(range(shard.count))):
            if position not in dropped:
                kept.setdefault(shard.name, []).append((r.id, [m.array.tobytes() for m in r.messages]))
            position += 1
    return kept


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
    assert report["prepared"] == 2 and report["skipped"] == 6 and report["lines"] == 8
    assert report["by_reason"] == {
        "missing file": 1,
        "unreadable audio": 1,
        "empty text": 1,
        "non-finite samples": 1,
        "duplicate id": 1,
        "malformed line": 1,
    }
    for entry in report["inputs"]:
        assert entry["reason"] and entry["where"].startswith("m.jsonl:") and int(entry["where"][8:]) >= 3
    assert "m.jsonl:7: id 'good' repeats m.jsonl:1" in [e["reason"] for e in report["inputs"]]
    kept = all_records(out)
    assert [i for records in kept.values() for i, _ in records] == ["good", "odd"]
    index = read_index(out)
    good, odd = read_records(index.records_path(index.shards[0]), [0, 1])
    assert odd.messages[0].kind == "flac" and odd.messages[0].samples == 16000  # 1 s at 8 kHz -> 16 kHz, mono
    assert len(decode_flac(odd.messages[0].array.tobytes())) == 16000 and odd.messages[0].mel_frames == 100
    assert good.messages[1].kind == "codes" and good.messages[1].array.shape[1] == 8
    # A re-run skips finished work units and gives the same index.
    before = (out / "index.json").read_text()
    (out / f"{index.shards[0].name}.array_record").chmod(0o444)
    assert prepare_manifest(cfg, manifest, out, progress=False)["prepared"] == 2
    assert (out / "index.json").read_text() == before


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """30 text examples in three parts of a directory (ids t7 and t13 appear again in a later
    part) plus a part of binary garbage."""
    root = tmp_path_factory.mktemp("parts")
    lines = [json.dumps({"id": f"t{i}", "task": "text_only", "text1": f"example number {i}"}) for i in range(30)]
    (root / "manifest").mkdir()
    for p in range(3):
        (root / "manifest" / f"part-{p}.jsonl").write_text("\n".join(lines[p * 10 : (p + 1) * 10]) + "\n")
    with open(root / "manifest" / "part-2.jsonl", "a") as f:
        f.write(json.dumps({"id": "t7", "task": "text_only", "text1": "again"}) + "\n")
        f.write(json.dumps({"id": "t13", "task": "text_only", "text1": "again"}) + "\n")
    (root / "manifest" / "part-3.jsonl").write_bytes(b"\xff\xfe\x00garbage\n\x80\x81\n")
    return root


def test_parts_over_two_processes_give_the_records_of_one(demo_root, parts, tmp_path):
    cfg = demo_config(demo_root, "data.examples_per_shard=4", "data.manifest_chunk_bytes=300")
    units = plan_units(manifest_parts(parts / "manifest"), 300)
    assert len(units) > 4 and any(u.start > 0 for u in units)  # parts are cut into byte ranges
    one = prepare_manifest(cfg, parts / "manifest", tmp_path / "one", progress=False)
    assert (
        prepare_manifest(cfg, parts / "manifest", tmp_path / "two", process_index=1, process_count=2, progress=False)
        is None
    )
    two = prepare_manifest(
        cfg,
        str(parts / "manifest" / "part-*.jsonl"),
        tmp_path / "two",
        process_index=0,
        process_count=2,
        progress=False,
    )
    assert one == two
    assert all_records(tmp_path / "one") == all_records(tmp_path / "two")
    ids = [i for records in all_records(tmp_path / "one").values() for i, _ in records]
    assert sorted(ids) == sorted(f"t{i}" for i in range(30))  # each id once: the repeats dropped
    duplicates = [e for e in one["inputs"] if e["kind"] == "duplicate id"]
    assert sorted(e["id"] for e in duplicates) == ["t13", "t7"]
    assert all(e["where"].startswith("part-2.jsonl@") and "repeats part-" in e["reason"] for e in duplicates)
    assert one["by_reason"]["not UTF-8"] == 2 and one["prepared"] == 30
    index = read_index(tmp_path / "one")
    assert index.examples == 30 and len(index.duplicates()) == 2


def test_an_unreadable_part_is_reported_and_the_rest_prepared(demo_root, parts, tmp_path):
    manifest = tmp_path / "manifest"
    manifest.mkdir()
    for p in range(2):
        os.symlink(parts / "manifest" / f"part-{p}.jsonl", manifest / f"part-{p}.jsonl")
    os.symlink(tmp_path / "nowhere.jsonl", manifest / "part-9.jsonl")  # listed, cannot be read
    report = prepare_manifest(demo_config(demo_root), manifest, tmp_path / "out", progress=False)
    assert report["prepared"] == 20 and report["by_reason"] == {"unreadable manifest part": 1}
    assert "part-9.jsonl" in report["inputs"][0]["reason"]


def test_a_directory_of_the_previous_format_is_refused_then_migrated(demo_root, tmp_path):
    """The format before compact metadata: index.json listing every example."""
    cfg = demo_config(demo_root)
    index = read_index(demo_root / "demo" / "prepared")
    records = read_records(index.records_path(index.shards[0]), list(range(index.shards[0].count)))
    old = tmp_path / "old"
    old.mkdir()
    writer = ArrayRecordWriter(str(old / "shard-00000.array_record"), "group_size:1")
    for r in records:
        writer.write(encode_record(r))
    writer.close()
    entry = {
        "file": "shard-00000.array_record",
        "count": len(records),
        "ids": [r.id for r in records],
        "frames": [r.frames for r in records],
        "text_only": [all(m.kind == "text" for m in r.messages) for r in records],
        "mel_frames": None,
    }
    (old / "index.json").write_text(
        json.dumps({"shards": [entry], "examples": len(records), "skipped": 0, "config_hash": "x"})
    )
    with pytest.raises(DataError, match=f"migrate it in place with `bagpiper-prepare --migrate {old}`"):
        read_index(old)
    migrate_v1(old, cfg.data.piece_frames)
    migrated = read_index(old)
    assert [s.count for s in migrated.shards] == [len(records)]
    np.testing.assert_array_equal(migrated.meta(migrated.shards[0]), index.meta(index.shards[0]))
    with pytest.raises(DataError, match="no index of the previous format"):
        migrate_v1(old, cfg.data.piece_frames)
    assert dataclasses.astuple(migrated.shards[0])[1:3] == (len(records), migrated.shards[0].records_crc32)


def test_encoder_token_counts_follow_the_towers_n_window(demo_root, tmp_path):
    """User audio occupies as many frames as the configured tower emits tokens: 13 per
    100-frame chunk at n_window 50, 25 per 200-frame chunk at the vLLM fork's 100."""
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


def test_a_demo_built_with_other_corpus_sizes_is_removed_inside_its_folder_only(tmp_path):
    root, outside = tmp_path / "demo", tmp_path / "my_tokenizer.json"
    (root / "corpus").mkdir(parents=True)
    (root / "corpus" / "manifest.jsonl").write_text("{}\n" * 3)
    (root / "corpus" / "heldout.jsonl").write_text("{}\n")
    (root / "prepared").mkdir()
    (root / "codec").mkdir()
    outside.write_text("{}")
    cfg = demo_config(tmp_path, f"assets.tokenizer={outside}")  # data and assets under tmp_path/demo
    remove_other_build(cfg, root, examples=3, heldout=1)  # the sizes asked for: kept
    assert (root / "corpus" / "manifest.jsonl").is_file() and (root / "prepared").is_dir()
    remove_other_build(cfg, root, examples=2000, heldout=40)
    assert not (root / "corpus").exists() and not (root / "prepared").exists() and not (root / "codec").exists()
    assert outside.is_file()  # an asset outside the demo folder is never touched
