"""Continuous audio in the model: pieces of a clip encoded in a packed batch equal the
tower on the whole clip, and land on the right frames."""
import jax
import numpy as np
from flax import nnx

from bagpiper_jax.audio_encoder.config import AudioEncoderConfig, output_lengths
from bagpiper_jax.audio_encoder.tower import AudioTower
from bagpiper_jax.model.continuous import encode_pieces


def test_pieces_equal_whole_clip_encoding():
    cfg = AudioEncoderConfig(d_model=16, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=32,
                             downsample_hidden_size=4, output_dim=8, n_window_infer=200)
    tower = AudioTower(cfg, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    clip = rng.normal(size=(450, 128)).astype(np.float32)
    whole, whole_len = tower(clip[None], np.array([450]))
    whole = np.asarray(whole[0, :int(whole_len[0])])
    # Row 0: slot 0 empty, then the clip's three pieces (200, 200, 50 frames) starting at frame 5.
    mel = np.zeros((1, 4, 200, 128), np.float32)
    lengths, clip_lengths, start = np.zeros((1, 4), np.int32), np.zeros((1, 4), np.int32), np.full((1, 4), -1)
    for j, p in enumerate(range(0, 450, 200)):
        piece = clip[p:p + 200]
        mel[0, j + 1, :len(piece)] = piece
        lengths[0, j + 1], clip_lengths[0, j + 1] = len(piece), 450
        start[0, j + 1] = 5 + output_lengths(p)
    features, frames = jax.jit(encode_pieces)(tower, mel, lengths, clip_lengths, start.astype(np.int32))
    features, frames = np.asarray(features[0]), np.asarray(frames[0])
    used = frames >= 0
    np.testing.assert_array_equal(frames[used], 5 + np.arange(len(whole)))
    np.testing.assert_allclose(features[used], whole, atol=1e-5)
    np.testing.assert_array_equal(features[~used], 0)


def test_flat_pieces_equal_padded_pieces():
    """The pipeline's layout (pieces back to back in one stream per row, with offsets)
    encodes exactly like pieces padded to one window each."""
    cfg = AudioEncoderConfig(d_model=16, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=32,
                             downsample_hidden_size=4, output_dim=8, n_window_infer=200)
    tower = AudioTower(cfg, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(1)
    clips = [rng.normal(size=(n, 128)).astype(np.float32) for n in (450, 37, 120)]
    pieces = [(c, p) for c in clips for p in range(0, len(c), 200)]  # 3 + 1 + 1 pieces
    mel = np.zeros((2, 4, 200, 128), np.float32)
    flat = rng.normal(size=(2, 700, 128)).astype(np.float32)  # garbage past the pieces must not matter
    lengths, clip_lengths, offset = (np.zeros((2, 4), np.int32) for _ in range(3))
    start = np.full((2, 4), -1, np.int32)
    at = [0, 0]
    for i, (clip, p) in enumerate(pieces):
        r, j = divmod(i, 4) if i < 4 else (1, i - 4 + 1)
        piece = clip[p:p + 200]
        mel[r, j, :len(piece)] = piece
        flat[r, at[r]:at[r] + len(piece)] = piece
        lengths[r, j], clip_lengths[r, j], offset[r, j], start[r, j] = len(piece), len(clip), at[r], 3 + 30 * j
        at[r] += len(piece)
    want = jax.jit(encode_pieces)(tower, mel, lengths, clip_lengths, start)
    got = jax.jit(encode_pieces)(tower, flat, lengths, clip_lengths, start, offset)
    np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(want[1]))
    np.testing.assert_allclose(np.asarray(got[0]), np.asarray(want[0]), atol=1e-6)
