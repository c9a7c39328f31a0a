"""Delay interleave / de-interleave and codes <-> unified ids."""

import numpy as np
import pytest

from bagpiper_jax.codec import interleave as il
from bagpiper_jax.config import ModelConfig
from bagpiper_jax.vocab import Vocab

VOCAB = Vocab.from_config(ModelConfig())


def test_delay_interleave_layout_and_round_trip():
    codes = np.arange(3 * 8).reshape(3, 8)
    pads = -np.arange(1, 9)
    x = il.delay_interleave(codes, pads)
    assert x.shape == (3 + 7, 8)
    for n in range(8):
        assert (x[:n, n] == pads[n]).all() and (x[n + 3 :, n] == pads[n]).all()
        np.testing.assert_array_equal(x[n : n + 3, n], codes[:, n])
    np.testing.assert_array_equal(il.delay_deinterleave(x), codes)
    assert il.delay_deinterleave(il.delay_interleave(codes[:0], pads)).shape == (0, 8)


def test_codes_ids_round_trip_with_vocab():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 1024, (50, 8))
    ids = il.interleaved_ids(codes, VOCAB)
    assert ids.shape == (57, 8) and ids.dtype == np.int32
    assert ids[0, 7] == VOCAB.audio_pad(7) == 152192 + 7 * 1025
    assert ids[0, 0] == 152192 + 1 + codes[0, 0]
    for n in range(8):
        lo, hi = VOCAB.stream_range(n)
        assert ((ids[:, n] >= lo) & (ids[:, n] < hi)).all()
    np.testing.assert_array_equal(il.codes_from_interleaved_ids(ids, VOCAB), codes)
    np.testing.assert_array_equal(il.ids_to_codes(il.codes_to_ids(codes[:, :3], VOCAB), VOCAB), codes[:, :3])


def test_errors():
    codes = np.zeros((4, 8), int)
    codes[1, 2] = 1024
    with pytest.raises(ValueError, match="stream 2"):
        il.codes_to_ids(codes, VOCAB)
    ids = il.codes_to_ids(np.zeros((4, 8), int), VOCAB)
    ids[2, 3] = VOCAB.audio_pad(3)
    with pytest.raises(ValueError, match="frame 2 of stream 3"):
        il.ids_to_codes(ids, VOCAB)
    with pytest.raises(ValueError, match="streams"):
        il.codes_to_ids(np.zeros((4, 9), int), VOCAB)
    with pytest.raises(ValueError, match="pad value per stream"):
        il.delay_interleave(np.zeros((4, 8), int), [0] * 7)
