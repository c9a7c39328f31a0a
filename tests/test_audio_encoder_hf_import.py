"""HF audio tower import/export: bit-exact round trips, full Qwen3-Omni directories, errors."""

import json

import jax
import ml_dtypes
import numpy as np
import pytest
from audio_encoder_testing import TINY, WINDOWS, hf_encode, random_features, tiny_hf_encoder
from flax import nnx

from bagpiper_jax.audio_encoder.config import AudioEncoderConfig
from bagpiper_jax.checkpoint.frozen_modules import load_tower
from bagpiper_jax.checkpoint.tensor_reader import CheckpointError, TensorReader
from bagpiper_jax.cli import convert
from bagpiper_jax.config import ConfigError
from bagpiper_jax.convert.hf_audio_encoder import config_from_hf, export_hf, import_hf, iter_hf_tensors


@pytest.fixture(scope="module")
def hf_model():
    return tiny_hf_encoder(seed=1)


@pytest.fixture(scope="module")
def hf_dir(hf_model, tmp_path_factory):
    directory = tmp_path_factory.mktemp("bare_encoder")
    hf_model.save_pretrained(directory)
    return directory


def _bits(array: np.ndarray) -> np.ndarray:
    return array.view(np.uint16 if array.dtype == ml_dtypes.bfloat16 else np.uint32)


def _torch_state(model) -> dict:
    import torch

    return {
        k: (v.view(torch.int16).numpy().view(ml_dtypes.bfloat16) if v.dtype == torch.bfloat16 else v.numpy())
        for k, v in model.state_dict().items()
    }


def test_config_from_bare_and_full_configs(hf_dir, tmp_path):
    assert config_from_hf(hf_dir) == AudioEncoderConfig(**TINY)
    full = {"model_type": "qwen3_omni_moe", "thinker_config": {"audio_config": {**TINY, "dropout": 0.1}}}
    (tmp_path / "config.json").write_text(json.dumps(full))
    assert config_from_hf(tmp_path) == AudioEncoderConfig(**TINY)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    with pytest.raises(ConfigError, match="thinker_config.audio_config"):
        config_from_hf(tmp_path)
    fork = {"model_type": "qwen3_omni_moe_audio_encoder", **TINY, "n_window": 100, "n_window_infer": 400}
    (tmp_path / "config.json").write_text(json.dumps(fork))  # the vLLM fork's window defaults
    assert config_from_hf(tmp_path) == AudioEncoderConfig(**{**TINY, **WINDOWS["n_window100"]})
    (tmp_path / "config.json").write_text(
        json.dumps({"thinker_config": {"audio_config": {"n_window": 100, "n_window_infer": 150}}})
    )
    with pytest.raises(ConfigError, match=r"audio_encoder.n_window_infer \(150\) must be at least one chunk"):
        config_from_hf(tmp_path)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_export_is_bit_exact_and_loads_in_hf(tmp_path, dtype):
    import torch
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeAudioEncoder

    source = tiny_hf_encoder(seed=1).to(getattr(torch, dtype))  # .to() is in place: own copy
    source.save_pretrained(tmp_path / "hf")
    config, params = import_hf(tmp_path / "hf")
    np_dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float32
    expected = _torch_state(source)
    exported = dict(iter_hf_tensors(config, params, dtype=np_dtype))
    assert sorted(exported) == sorted(expected)
    for name, array in exported.items():
        assert array.dtype == expected[name].dtype and array.shape == expected[name].shape, name
        np.testing.assert_array_equal(_bits(array), _bits(expected[name]), err_msg=name)

    export_hf(config, params, tmp_path / "exported", dtype=np_dtype)
    reloaded = Qwen3OmniMoeAudioEncoder.from_pretrained(tmp_path / "exported", dtype=getattr(torch, dtype))
    for name, array in _torch_state(reloaded).items():
        np.testing.assert_array_equal(_bits(array), _bits(expected[name]), err_msg=name)


def _write_full_checkpoint(hf_model, directory, prefix):
    """A sharded Qwen3-Omni-style directory: the tower under ``prefix`` next to other weights."""
    from safetensors.numpy import save_file

    directory.mkdir()
    audio = {prefix + k: v for k, v in _torch_state(hf_model).items()}
    others = {
        "thinker.model.layers.0.mlp.gate.weight": np.ones((64, 32), np.float32),
        "talker.model.embed_tokens.weight": np.ones((8, 4), np.float32),
    }
    names = sorted(audio)
    shards = {
        "model-00001-of-00002.safetensors": {**{k: audio[k] for k in names[:5]}, **others},
        "model-00002-of-00002.safetensors": {k: audio[k] for k in names[5:]},
    }
    for file, tensors in shards.items():
        save_file(tensors, str(directory / file))
    index = {"weight_map": {k: f for f, tensors in shards.items() for k in tensors}}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    config = {
        "model_type": "qwen3_omni_moe",
        "thinker_config": {"audio_config": dict(TINY), "text_config": {"hidden_size": 32}},
    }
    (directory / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("prefix", ["thinker.audio_tower.", "thinker.model.audio_tower."])
def test_full_qwen3_omni_directory_reads_only_the_tower(hf_model, hf_dir, tmp_path, monkeypatch, prefix):
    _write_full_checkpoint(hf_model, tmp_path / "omni", prefix)
    read = []
    original_get = TensorReader.get
    monkeypatch.setattr(
        TensorReader, "get", lambda self, name, shape=None: (read.append(name), original_get(self, name, shape))[1]
    )
    config, params = import_hf(tmp_path / "omni")
    assert not any(name.startswith(("thinker.model.layers", "talker")) for name in read)
    assert config == AudioEncoderConfig(**TINY)
    _, bare = import_hf(hf_dir)
    assert jax.tree.all(jax.tree.map(np.array_equal, params, bare))


def test_convert_cli_writes_a_loadable_params_dir(hf_model, hf_dir, tmp_path, capsys):
    assert convert.main(["hf-audio-encoder", "--hf", str(hf_dir), "--out", str(tmp_path / "enc")]) == 0
    assert "24,080 parameters" in capsys.readouterr().out
    tower = load_tower(tmp_path / "enc")
    assert tower.config == AudioEncoderConfig(**TINY)
    lengths = [250, 420]
    features = random_features(lengths, 500)
    outputs, token_lengths = nnx.jit(lambda t, f, n: t(f, n))(tower, features, np.array(lengths))
    expected = hf_encode(hf_model, [features[i, :n] for i, n in enumerate(lengths)])
    for i, n in enumerate(token_lengths):
        np.testing.assert_allclose(outputs[i, :n], expected[i], rtol=0, atol=1e-5)


def test_mismatched_checkpoints_are_named(hf_model, tmp_path):
    from safetensors.numpy import save_file

    state = _torch_state(hf_model)
    config = json.dumps({"model_type": "qwen3_omni_moe_audio_encoder", **TINY})

    bad_shape = dict(state, **{"layers.1.fc1.weight": state["layers.1.fc1.weight"].T.copy()})
    (tmp_path / "shape").mkdir()
    save_file(bad_shape, str(tmp_path / "shape" / "model.safetensors"))
    (tmp_path / "shape" / "config.json").write_text(config)
    with pytest.raises(CheckpointError, match=r"'layers.1.fc1.weight' has shape \(32, 64\)"):
        import_hf(tmp_path / "shape")

    missing = {k: v for k, v in state.items() if k != "proj2.bias"}
    (tmp_path / "missing").mkdir()
    save_file(missing, str(tmp_path / "missing" / "model.safetensors"))
    (tmp_path / "missing" / "config.json").write_text(config)
    with pytest.raises(CheckpointError, match="'proj2.bias' missing"):
        import_hf(tmp_path / "missing")

    extra = dict(state, **{"layers.2.fc1.bias": state["layers.1.fc1.bias"]})
    (tmp_path / "extra").mkdir()
    save_file(extra, str(tmp_path / "extra" / "model.safetensors"))
    (tmp_path / "extra" / "config.json").write_text(config)
    with pytest.raises(CheckpointError, match="layers.2.fc1.bias"):
        import_hf(tmp_path / "extra")
