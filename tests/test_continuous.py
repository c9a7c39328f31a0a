"""Continuous audio in the model: pieces of clips packed in a batch (the layout of training
batches and generation prompts) encode exactly like each clip whole, and land on the right
frames."""

import jax
import numpy as np
from audio_encoder_testing import TINY
from flax import nnx

from bagpiper_jax.audio_encoder.config import AudioEncoderConfig, output_lengths
from bagpiper_jax.audio_encoder.frozen import FrozenTower
from bagpiper_jax.audio_encoder.pieces import MelPieces
from bagpiper_jax.audio_encoder.tower import AudioTower
from bagpiper_jax.config import MeshConfig
from bagpiper_jax.sharding import make_mesh

CONFIG = AudioEncoderConfig(**TINY)  # windows of 200 frames


def frozen_tower():
    tower = AudioTower(CONFIG, rngs=nnx.Rngs(0))
    return tower, FrozenTower.from_tower(tower, make_mesh(MeshConfig(), jax.devices()[:1]), ())


def whole(tower, clip):
    out, length = tower(clip[None], np.array([len(clip)]))
    return np.asarray(out[0, : int(length[0])])


def test_pieces_equal_whole_clip_encoding():
    tower, frozen = frozen_tower()
    clip = np.random.default_rng(0).normal(size=(450, 128)).astype(np.float32)
    # Slot 0 empty, then the clip's three pieces (200, 200, 50 frames) back to back, tokens from frame 5.
    pieces = MelPieces(
        np.zeros((1, 450, 128), np.float32),
        np.zeros((1, 4), np.int32),
        np.zeros((1, 4), np.int32),
        np.zeros((1, 4), np.int32),
        np.full((1, 4), -1, np.int32),
    )
    pieces.mel[0] = clip
    for j, p in enumerate(range(0, 450, 200)):
        n = min(200, 450 - p)
        pieces.offset[0, j + 1], pieces.lengths[0, j + 1], pieces.clip_lengths[0, j + 1] = p, n, 450
        pieces.start[0, j + 1] = 5 + output_lengths(p)
    continuous = jax.jit(frozen.encode)(frozen.params, pieces)
    features, frames = np.asarray(continuous.features[0]), np.asarray(continuous.frames[0])
    used = frames >= 0
    expected = whole(tower, clip)
    np.testing.assert_array_equal(frames[used], 5 + np.arange(len(expected)))
    np.testing.assert_allclose(features[used], expected, atol=1e-5)
    np.testing.assert_array_equal(features[~used], 0)


def test_packed_clips_of_two_rows_equal_each_clip_whole():
    """Three clips over two rows, one stream per row with offsets; frames past the pieces
    hold garbage that must not matter."""
    tower, frozen = frozen_tower()
    rng = np.random.default_rng(1)
    clips = [rng.normal(size=(n, 128)).astype(np.float32) for n in (450, 37, 120)]
    placement = [(0, 0), (1, 0), (1, 1)]  # (row, clip index within its row)
    mel = rng.normal(size=(2, 700, 128)).astype(np.float32)
    fields = [np.zeros((2, 4), np.int32) for _ in range(3)]
    start = np.full((2, 4), -1, np.int32)
    at, slot, expected = [0, 0], [0, 0], {}
    for (row, k), clip in zip(placement, clips):
        first_token = 3 + 40 * k
        for p in range(0, len(clip), 200):
            piece = clip[p : p + 200]
            mel[row, at[row] : at[row] + len(piece)] = piece
            j = slot[row]
            fields[0][row, j], fields[1][row, j], fields[2][row, j] = at[row], len(piece), len(clip)
            start[row, j] = first_token + output_lengths(p)
            at[row], slot[row] = at[row] + len(piece), j + 1
        expected[(row, first_token)] = whole(tower, clip)
    continuous = jax.jit(frozen.encode)(frozen.params, MelPieces(mel, *fields, start))
    features, frames = np.asarray(continuous.features), np.asarray(continuous.frames)
    for (row, first_token), want in expected.items():
        where = {int(f): i for i, f in enumerate(frames[row]) if f >= 0}
        got = np.stack([features[row, where[first_token + t]] for t in range(len(want))])
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert sum(len(w) for w in expected.values()) == int((frames >= 0).sum())
