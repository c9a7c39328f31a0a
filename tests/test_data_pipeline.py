"""The Grain pipeline: packing, exact resume (0 and 2 workers), per-process coverage."""

import dataclasses
import itertools

import numpy as np
import pytest
from helpers import tiny_config

from bagpiper_jax.audio_encoder.config import output_lengths
from bagpiper_jax.config import DataConfig
from bagpiper_jax.data.pipeline import DataError, build_pipeline, packing_efficiency
from bagpiper_jax.data.records import PreparedExample, PreparedMessage
from bagpiper_jax.data.shards import write_index, write_shard
from bagpiper_jax.data.template import example_frames
from bagpiper_jax.model.batch import Batch
from bagpiper_jax.vocab import TEXT, Vocab

CFG = tiny_config()
VOCAB = Vocab.from_config(CFG.model)
MEL_BINS = 8


def random_example(i: int, rng: np.random.Generator) -> PreparedExample:
    """Example ``i``: its first text token is ``i`` (so packed rows reveal which examples they hold)."""
    text = lambda n: np.concatenate([[i], rng.integers(0, VOCAB.text_size, n - 1)]).astype(np.int32)
    kind = i % 4
    if kind == 0:
        messages = [PreparedMessage("assistant", "text", "text", text(int(rng.integers(5, 40))))]
    elif kind == 1:
        messages = [
            PreparedMessage("user", "text", "text", text(int(rng.integers(3, 15)))),
            PreparedMessage(
                "assistant",
                "audio",
                "codes",
                rng.integers(0, VOCAB.codebook_size, (int(rng.integers(10, 60)), 8)).astype(np.int16),
            ),
        ]
    elif kind == 2:
        messages = [
            PreparedMessage(
                "user", "audio", "mel", rng.normal(size=(int(rng.integers(50, 450)), MEL_BINS)).astype(np.float32)
            ),
            PreparedMessage("assistant", "text", "text", text(int(rng.integers(3, 20)))),
        ]
    else:
        messages = [
            PreparedMessage("user", "text", "text", text(4)),
            PreparedMessage("assistant", "text", "text", text(int(rng.integers(3, 10)))),
            PreparedMessage(
                "assistant",
                "audio",
                "codes",
                rng.integers(0, VOCAB.codebook_size, (int(rng.integers(5, 30)), 8)).astype(np.int16),
            ),
        ]
    ex = PreparedExample(f"ex{i}", "dialogue", 0, tuple(messages))
    return dataclasses.replace(ex, frames=example_frames(ex, VOCAB, output_lengths))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    rng = np.random.default_rng(0)
    examples = [random_example(i, rng) for i in range(90)]
    long_text = PreparedMessage("assistant", "text", "text", np.full(300, 5, np.int32))
    examples.append(dataclasses.replace(PreparedExample("long", "text_only", 301 + 3, (long_text,))))
    shards = [
        write_shard(out, f"shard-{k:06d}-0000", part, [f"m.jsonl:{k * 31 + i + 1}" for i in range(len(part))], 200)
        for k, part in enumerate(examples[k * 31 : (k + 1) * 31] for k in range(3))
    ]
    write_index(out, shards, "test", 200, 0, np.zeros(0, np.int64))
    return out, examples


def pipeline(prepared_dir, **overrides):
    fields = dict(
        prepared=str(prepared_dir),
        row_frames=256,
        batch_rows=4,
        max_pieces_per_row=4,
        piece_frames=200,
        mel_frames_per_row=1024,
        packing_bins=8,
        guidance_drop=0.3,
        shuffle_seed=1,
    )
    shard = {k: overrides.pop(k) for k in ("shard_index", "shard_count", "epochs") if k in overrides}
    return build_pipeline(DataConfig(**{**fields, **overrides}), VOCAB, output_lengths, MEL_BINS, **shard)


def fields(batch: Batch) -> dict:
    """A batch's arrays by name (pieces prefixed ``mel_``, ``mel`` itself the log-mel stream)."""
    p = batch.pieces
    return {
        "ids": batch.ids,
        "segment_ids": batch.segment_ids,
        "positions": batch.positions,
        "loss_mask": batch.loss_mask,
        "mel": p.mel,
        "mel_offset": p.offset,
        "mel_lengths": p.lengths,
        "mel_clip_lengths": p.clip_lengths,
        "mel_start": p.start,
    }


def mel_of(example: PreparedExample) -> np.ndarray:
    return np.concatenate([m.array for m in example.messages if m.kind == "mel"] or [np.zeros((0, MEL_BINS))])


def test_packed_rows_are_well_formed(prepared):
    pipe = pipeline(prepared[0])
    assert pipe.report == {
        "main": {
            "records": 91,
            "kept": 90,
            "duplicates": 0,
            "skipped_overlong": 1,
            "skipped_audio_budget": 0,
            "truncated": 0,
        }
    }
    batches = list(itertools.islice(iter(pipe), 6))
    assert all(isinstance(b, Batch) for b in batches)
    cfg_dropped, pieces_seen = [], 0
    for b in map(fields, batches):
        assert b["ids"].shape == (4, 256, 8) and b["mel"].shape == (4, 1024, MEL_BINS)
        assert b["mel_offset"].shape == (4, 4)
        for r in range(4):
            seg, pos = b["segment_ids"][r], b["positions"][r]
            np.testing.assert_array_equal(b["loss_mask"][r][seg == 0], 0)  # padding has weight 0
            np.testing.assert_array_equal(b["ids"][r][seg == 0], 0)
            for s in set(seg[seg > 0]):
                frames = np.flatnonzero(seg == s)
                assert frames[-1] - frames[0] + 1 == len(frames)  # contiguous
                np.testing.assert_array_equal(pos[frames], np.arange(len(frames)))  # restart at 0
                first = b["ids"][r, frames[0], 0]
                if first == 0:  # CFG dropout: only one assistant audio message is left
                    kept = b["ids"][r, frames, 0][b["ids"][r, frames, 0] != 0]
                    assert list(kept[:2]) == [6, 8] and b["loss_mask"][r, frames[0]].sum() == 0
                    cfg_dropped.append(1)
                else:
                    assert first == 1  # <|bos|>
            mel_used = 0
            for j in np.flatnonzero(b["mel_lengths"][r]):  # pieces land on placeholder frames of a segment
                start = b["mel_start"][r, j]
                n = output_lengths(int(b["mel_lengths"][r, j]))
                assert seg[start] > 0 and seg[start + n - 1] == seg[start]
                np.testing.assert_array_equal(b["ids"][r, start : start + n], 0)
                # ... and hold the frames of the example's clip they were cut from
                frames = np.flatnonzero(seg == seg[start])
                clip = mel_of(
                    prepared[1][
                        segments_first_tokens(
                            [{"ids": b["ids"][r : r + 1], "segment_ids": seg[None] * (seg == seg[start])}]
                        )[0]
                    ]
                )
                assert b["mel_clip_lengths"][r, j] == len(clip)
                cut = 200 * [output_lengths(200 * k) for k in range(3)].index(start - frames[0] - 3)  # bos user audio
                offset, length = b["mel_offset"][r, j], b["mel_lengths"][r, j]
                assert length == min(200, len(clip) - cut)
                np.testing.assert_array_equal(b["mel"][r, offset : offset + length], clip[cut : cut + length])
                mel_used = max(mel_used, offset + length)
                pieces_seen += 1
            np.testing.assert_array_equal(b["mel"][r, mel_used:], 0)
            assert np.all(b["mel_start"][r][b["mel_lengths"][r] == 0] == -1)
    assert cfg_dropped  # guidance_drop=0.3 hit some examples
    assert pieces_seen
    efficiency = np.mean([packing_efficiency(b) for b in batches])
    print(f"packing efficiency {efficiency:.3f}")
    assert efficiency > 0.7


def test_overlong_text_only_can_be_truncated(prepared):
    pipe = pipeline(prepared[0], overlong="truncate")
    assert pipe.report["main"]["truncated"] == 1 and pipe.report["main"]["kept"] == 91


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_yields_identical_batches(prepared, workers):
    it = iter(pipeline(prepared[0], workers=workers))
    for _ in range(3):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(3)]
    resumed = iter(pipeline(prepared[0], workers=workers))
    resumed.set_state(state)
    for want in map(fields, expected):
        got = fields(next(resumed))
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def segments_first_tokens(batches):
    """Example index of every packed segment (its first text token, the frame after the first
    ``<|text|>``; token 0 is templated as id 0)."""
    found = []
    for b in batches:
        b = b if isinstance(b, dict) else fields(b)
        for r in range(len(b["ids"])):
            seg = b["segment_ids"][r]
            for s in sorted(set(seg[seg > 0])):
                frames = np.flatnonzero(seg == s)
                ids = b["ids"][r, frames, 0]
                first = int(ids[np.flatnonzero(ids == TEXT)[0] + 1])
                found.append(first - VOCAB.text_offset if first else 0)
    return found


def test_two_input_shards_cover_the_epoch_exactly_once(prepared):
    seen = []
    for p in range(2):
        pipe = pipeline(prepared[0], shard_index=p, shard_count=2, epochs=1, guidance_drop=0.0, batch_rows=4)
        seen += segments_first_tokens(list(iter(pipe)))
    assert sorted(seen) == list(range(90))


def test_text_token0_switch_reaches_the_templates(prepared):
    """``data.text_token0_as_pad`` (default true) maps text token 0 to id 0; false keeps it an
    ordinary text id. Nothing else in the batches changes, loss weights included."""
    kwargs = dict(shard_index=0, shard_count=1, epochs=1, guidance_drop=0.0)
    reference = list(itertools.islice(iter(pipeline(prepared[0], **kwargs)), 8))
    ordinary = list(itertools.islice(iter(pipeline(prepared[0], text_token0_as_pad=False, **kwargs)), 8))
    changed = 0
    for a, b in zip(map(fields, reference), map(fields, ordinary)):
        differ = a["ids"] != b["ids"]
        assert (a["ids"][differ] == 0).all() and (b["ids"][differ] == VOCAB.text_offset).all()
        np.testing.assert_array_equal(a["loss_mask"], b["loss_mask"])
        changed += int(differ.sum())
    assert changed  # token 0 occurs (example 0 starts with it)


def test_missing_index_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="index.json not found: run bagpiper-prepare"):
        pipeline(tmp_path)


def test_examples_with_more_audio_than_a_row_holds_are_skipped_and_counted(prepared):
    directory, examples = prepared
    clips = {e.id: [len(m.array) for m in e.messages if m.kind == "mel"] for e in examples if e.frames <= 256}
    limit = sorted(sum(c) for c in clips.values())[-3]  # a mel budget a few examples exceed
    over = {i for i, c in clips.items() if sum(c) > limit or sum(-(-n // 200) for n in c) > 4}
    pipe = pipeline(directory, mel_frames_per_row=limit)
    assert over and pipe.report["main"]["skipped_audio_budget"] == len(over)
    assert pipe.report["main"]["kept"] == 90 - len(over)
