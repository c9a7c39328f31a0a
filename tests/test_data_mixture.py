"""Weighted mixtures of prepared sources: proportions, exact resume, and changing the
mixture on resume (what continues, what restarts)."""

import dataclasses
import itertools

import jax
import numpy as np
import pytest
from helpers import tiny_config

from bagpiper_jax.audio_encoder.config import output_lengths
from bagpiper_jax.config import DataConfig, SourceConfig
from bagpiper_jax.data.pipeline import build_pipeline
from bagpiper_jax.data.records import PreparedExample, PreparedMessage
from bagpiper_jax.data.shards import write_index, write_shard
from bagpiper_jax.data.template import example_frames
from bagpiper_jax.vocab import Vocab

VOCAB = Vocab.from_config(tiny_config().model)
SOURCES = ("a", "b", "c")


def write_source(directory, source: int, examples: int, shard_size: int = 20):
    """Text-only examples whose first two text tokens are (source + 1, example number + 1):
    text token 0 becomes the pad id in templates."""
    rng = np.random.default_rng(source)
    directory.mkdir()
    records = []
    for i in range(examples):
        tokens = np.concatenate([[source + 1, i + 1], rng.integers(0, VOCAB.text_size, int(rng.integers(5, 30)))])
        ex = PreparedExample(
            f"{source}-{i}", "text_only", 0, (PreparedMessage("assistant", "text", "text", tokens.astype(np.int32)),)
        )
        records.append(dataclasses.replace(ex, frames=example_frames(ex, VOCAB, output_lengths)))
    shards = [
        write_shard(
            directory,
            f"shard-{k:06d}-0000",
            records[k : k + shard_size],
            [f"s{source}.jsonl:{j + 1}" for j in range(k, min(k + shard_size, examples))],
            200,
        )
        for k in range(0, examples, shard_size)
    ]
    write_index(directory, shards, "test", 200, 0, np.zeros(0, np.int64))


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixture")
    for number, name in enumerate(SOURCES):
        write_source(root / name, number, (400, 100, 60)[number])
    return root


def pipeline(root, weights: dict[str, float], **overrides):
    mixture = tuple(SourceConfig(name, str(root / name), weight) for name, weight in weights.items())
    cfg = DataConfig(
        sources=mixture,
        row_frames=128,
        batch_rows=4,
        max_pieces_per_row=2,
        piece_frames=200,
        mel_frames_per_row=64,
        packing_bins=4,
        guidance_drop=0.0,
        shuffle_seed=3,
        **overrides,
    )
    return build_pipeline(cfg, VOCAB, output_lengths, 8)


def examples(batches) -> list[tuple[str, int]]:
    """(source name, example number) of every packed segment, in row order, checked against
    the batch's per-frame source labels."""
    found = []
    for b in batches:
        for r in range(b.rows):
            for s in sorted(set(b.segment_ids[r][b.segment_ids[r] > 0])):
                frames = np.flatnonzero(b.segment_ids[r] == s)
                source, number = (b.ids[r, frames[3:5], 0] - VOCAB.text_offset - 1).tolist()  # after bos, role, mod.
                assert (b.source[r, frames] == source).all()  # mixtures here list the sources in SOURCES order
                found.append((SOURCES[source], number))
    return found


def test_examples_are_drawn_by_weight(sources):
    pipe = pipeline(sources, {"a": 3.0, "b": 1.0})
    assert set(pipe.report) == {"a", "b"} and pipe.report["a"]["kept"] == 400
    seen = examples(itertools.islice(iter(pipe), 60))
    share = sum(name == "a" for name, _ in seen) / len(seen)
    print(f"share of source a: {share:.3f} over {len(seen)} examples (weight 0.75)")
    assert abs(share - 0.75) <= 0.02  # Grain's mixing is a deterministic interleave: exact up to packing order
    b = [n for name, n in seen if name == "b"]
    # One epoch of b is its 100 examples once each, except that packing may move up to a
    # bin's worth (data.packing_bins = 4) across the epoch boundary.
    assert len(b) > 100 and len(set(b[:100])) >= 96


def test_resume_is_bit_identical(sources):
    it = iter(pipeline(sources, {"a": 3.0, "b": 1.0}))
    for _ in range(5):
        next(it)
    state = it.get_state()
    want = [next(it) for _ in range(4)]
    resumed = iter(pipeline(sources, {"a": 3.0, "b": 1.0}))
    resumed.set_state(state)
    for w in want:
        jax.tree.map(np.testing.assert_array_equal, next(resumed), w)


def test_changing_the_mixture_on_resume(sources):
    """Documented (docs/data.md, Mixtures): each source continues where it stopped, a new
    source starts from its beginning, the proportions follow the new weights."""
    it = iter(pipeline(sources, {"a": 1.0, "b": 1.0}))
    before = examples(itertools.islice(it, 6))
    state = it.get_state()
    changed = iter(pipeline(sources, {"a": 1.0, "b": 3.0, "c": 1.0}))
    changed.set_state(state)
    after = examples(itertools.islice(changed, 40))
    for name in ("a", "b"):  # no example of the first epoch repeats: each continued where it stopped
        seen = [n for source, n in before + after if source == name][:60]
        assert len(set(seen)) == len(seen)
    first_c = [n for source, n in after if source == "c"]
    assert first_c and len(set(first_c[:40])) == len(first_c[:40])  # c started anew
    counts = {name: sum(source == name for source, _ in after[10:]) for name in SOURCES}
    assert counts["b"] > 2 * counts["a"] and counts["b"] > 2 * counts["c"]
