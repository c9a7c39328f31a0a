"""Audio tower vs a tiny random HF Qwen3OmniMoeAudioEncoder (n_window 50 and 100), lengths,
sizes, sharding, bf16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from audio_encoder_testing import WINDOWS, fork_output_lengths, hf_encode, random_features, tiny_hf_encoder
from flax import nnx

from bagpiper_jax.audio_encoder.config import AudioEncoderConfig, output_lengths
from bagpiper_jax.audio_encoder.tower import AudioTower, bucket_frames, encode, parameter_count, tower_from_params
from bagpiper_jax.convert.hf_audio_encoder import import_hf

run_tower = nnx.jit(lambda tower, *args: tower(*args))


@pytest.fixture(scope="module", params=sorted(WINDOWS))
def hf_model(request):
    return tiny_hf_encoder(**WINDOWS[request.param])


@pytest.fixture(scope="module")
def tower(hf_model, tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny_hf_encoder")
    hf_model.save_pretrained(directory)
    tower = tower_from_params(*import_hf(directory))
    assert (tower.config.n_window, tower.config.n_window_infer) == (hf_model.n_window, hf_model.n_window_infer)
    return tower


def _check_against_hf(tower, hf_model, lengths, frames, hf_one_call):
    """Our batch vs HF, in one HF call or one call per clip."""
    features = random_features(lengths, frames)
    outputs, token_lengths = run_tower(tower, features, np.array(lengths))
    outputs = np.asarray(outputs)
    np.testing.assert_array_equal(token_lengths, output_lengths(np.array(lengths), tower.config))
    clips = [features[i, :n] for i, n in enumerate(lengths)]
    expected = hf_encode(hf_model, clips) if hf_one_call else [hf_encode(hf_model, [c])[0] for c in clips]
    for i, n in enumerate(token_lengths):
        np.testing.assert_allclose(outputs[i, :n], expected[i], rtol=0, atol=1e-5)
        assert not outputs[i, n:].any(), "outputs past a clip's tokens must be zero"


def test_matches_hf_on_a_mixed_batch(tower, hf_model):
    # 250: partial tail chunk; 3 chunks exactly; 1030: several windows (26 or 50 tokens) and a tail.
    chunk = tower.config.chunk_frames
    _check_against_hf(tower, hf_model, [250, 3 * chunk, 1030], frames=1200, hf_one_call=True)


def test_short_clips_match_hf_encoding_each_alone(tower, hf_model):
    # HF pads all chunks of a call to its longest chunk, so a clip under one chunk gets an
    # output that depends on its batch-mates there; ours is always HF's output for the clip
    # alone (see tower.py).
    chunk = tower.config.chunk_frames
    _check_against_hf(tower, hf_model, [1, 37, chunk // 2, chunk - 1, chunk], frames=200, hf_one_call=False)


def test_output_does_not_depend_on_padding_or_batch_mates(tower):
    lengths = [130, 37, 777]
    features = random_features(lengths, 800)
    small, _ = run_tower(tower, features, np.array(lengths))
    padded = np.zeros((2, 1600, 128), np.float32)
    padded[0], padded[0, :800] = 5.0, features[2]  # garbage past the clip must not matter
    padded[1, :800] = features[1]
    large, _ = run_tower(tower, padded, np.array([777, 37]))
    np.testing.assert_allclose(large[0, : small.shape[1]], small[2], rtol=0, atol=1e-6)
    np.testing.assert_allclose(large[1, : small.shape[1]], small[1], rtol=0, atol=1e-6)


def test_clip_equals_its_windows_encoded_separately(tower):
    # Windows of 200 / 400 frames (26 / 50 tokens in the tiny configs); the last one has 30
    # frames, so it needs the clip's length to match the whole clip.
    window = tower.config.window_frames
    frames = 1000 // window * window + 30
    features = random_features([frames])
    whole, token_lengths = run_tower(tower, features, np.array([frames]))
    starts = list(range(0, frames, window))
    rows = np.zeros((len(starts), window, 128), np.float32)
    for row, start in enumerate(starts):
        piece = features[0, start : start + window]
        rows[row, : len(piece)] = piece
    row_lengths = np.minimum(frames - np.array(starts), window)
    parts, part_lengths = run_tower(tower, rows, row_lengths, np.full(len(starts), frames))
    joined = np.concatenate([parts[i, :n] for i, n in enumerate(part_lengths)])
    assert len(joined) == token_lengths[0]
    np.testing.assert_allclose(joined, whole[0, : token_lengths[0]], rtol=0, atol=1e-5)
    alone, _ = run_tower(tower, rows[-1:], row_lengths[-1:])  # as a 30-frame clip of its own
    assert not np.allclose(alone[0, : part_lengths[-1]], parts[-1, : part_lengths[-1]], atol=1e-3)


def test_output_lengths_match_hf_formula():
    import torch
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import _get_feat_extract_output_lengths

    frames = [1, 50, 99, 100, 101, 199, 200, 201, 1000, 3000]
    expected = _get_feat_extract_output_lengths(torch.tensor(frames)).tolist()
    assert [output_lengths(n) for n in frames] == expected
    assert output_lengths(np.array(frames)).tolist() == expected
    assert output_lengths(3000) == 390  # 13 tokens per second
    assert fork_output_lengths(torch.tensor(frames)).tolist() == expected  # the fork agrees at n_window 50


def test_output_lengths_follow_n_window_100():
    """200-frame chunks of 25 tokens, as the vLLM fork counts them; HF's own formula (13 per
    chunk whatever its size) cannot describe this tower (docs/audio_encoder.md)."""
    import torch
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import _get_feat_extract_output_lengths

    config = AudioEncoderConfig(n_window=100, n_window_infer=400)
    assert (config.chunk_frames, config.tokens_per_chunk, config.window_tokens, config.window_frames) == (
        200,
        25,
        50,
        400,
    )
    frames = [1, 50, 99, 100, 101, 199, 200, 201, 1000, 3000]
    expected = fork_output_lengths(torch.tensor(frames), 100).tolist()
    assert [output_lengths(n, config) for n in frames] == expected
    assert output_lengths(np.array(frames), config).tolist() == expected
    assert output_lengths(3000, config) == 375  # 12.5 tokens per second
    assert _get_feat_extract_output_lengths(torch.tensor(3000), 100).item() == 195  # HF: 13 per 200-frame chunk


def test_tower_token_lengths_for_reference_frame_counts(tower):
    frames = [1, 50, 99, 100, 101, 199, 200, 1000, 3000]
    _, token_lengths = run_tower(tower, random_features(frames), np.array(frames))
    assert token_lengths.tolist() == [output_lengths(n, tower.config) for n in frames]
    assert token_lengths.tolist() == fork_output_lengths(np.array(frames), tower.config.n_window).tolist()


def test_full_size_parameter_count():
    import torch
    from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import Qwen3OmniMoeAudioEncoderConfig
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeAudioEncoder

    config = AudioEncoderConfig()
    assert config.output_dim == 2048 and config.window_tokens == 104
    abstract = nnx.eval_shape(lambda: AudioTower(config, rngs=nnx.Rngs(0)))
    count = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    with torch.device("meta"):
        hf = Qwen3OmniMoeAudioEncoder(Qwen3OmniMoeAudioEncoderConfig(output_dim=2048))
    assert count == parameter_count(config) == sum(p.numel() for p in hf.parameters())
    print(f"full-size audio tower: {count:,} parameters")
    assert count == 647_927_168  # docs/audio_encoder.md: ~648M


def test_sharded_forward_matches_unsharded(tower):
    from bagpiper_jax.config import MeshConfig
    from bagpiper_jax.sharding import make_mesh, state_shardings

    mesh_config = MeshConfig(data=1, fsdp=4, tensor=2)
    mesh = make_mesh(mesh_config)
    graphdef, state = nnx.split(tower)
    sharded = nnx.merge(graphdef, jax.device_put(state, state_shardings(state, mesh, mesh_config.rules)))
    assert sharded.layers.q_proj.kernel[...].sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
    lengths = [250, 1030]
    features = random_features(lengths, 1100)
    expected, _ = run_tower(tower, features, np.array(lengths))
    with jax.set_mesh(mesh):
        got, _ = run_tower(sharded, features, np.array(lengths))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)  # sharded sums reorder fp32 adds


def test_bf16_compute_tracks_fp32(hf_model, tower):
    bf16 = tower_from_params(tower.config, nnx.to_pure_dict(nnx.state(tower)), jnp.bfloat16)
    lengths = [250, 1030]
    features = random_features(lengths, 1100)
    expected, _ = run_tower(tower, features, np.array(lengths))
    got, _ = run_tower(bf16, features, np.array(lengths))
    assert got.dtype == jnp.bfloat16
    error = np.abs(np.asarray(got, np.float32) - np.asarray(expected))
    assert error.max() < 0.05 * np.abs(np.asarray(expected)).max()


def test_encode_is_frozen(tower):
    lengths = np.array([250])
    features = random_features([250], 300)

    def loss(t):
        outputs, _ = encode(t, features, lengths)
        return jnp.sum(outputs**2)

    grads = nnx.jit(nnx.grad(loss))(tower)
    assert all(not np.asarray(g).any() for g in jax.tree.leaves(grads))


def test_bucket_frames():
    assert [bucket_frames(n) for n in (1, 800, 801, 3000)] == [800, 800, 1600, 3200]
    assert bucket_frames(1030, step=100) == 1100
