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
