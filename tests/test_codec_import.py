"""HF XCodec import / export: bit-exact round trips, weight-norm forms, prefixes, errors,
the full-size parameter count, and ``bagpiper-convert hf-xcodec``."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from safetensors.numpy import load_file, save_file
from test_codec_hf import make_tiny_hf

from bagpiper_jax.checkpoint.errors import CheckpointError
from bagpiper_jax.checkpoint.frozen_modules import load_codec
from bagpiper_jax.codec.config import XCodecConfig
from bagpiper_jax.codec.params import abstract_model, params_from_model
from bagpiper_jax.codec.xcodec import num_parameters
from bagpiper_jax.convert import hf_xcodec as hf_import

POS = "semantic_model.encoder.pos_conv_embed.conv."


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("hf_xcodec")
    make_tiny_hf(directory, seed=1)
    return directory


def _rewrite(src, dst, rename, extra):
    """Copies an HF directory with renamed keys and extra tensors."""
    dst.mkdir()
    state = {rename(k): v for k, v in load_file(str(src / "model.safetensors")).items()}
    save_file({**state, **(extra or {})}, str(dst / "model.safetensors"))
    (dst / "config.json").write_text((src / "config.json").read_text())
    return state


def _assert_bit_exact(exported, original):
    assert sorted(exported) == sorted(original)
    for k, v in original.items():
        assert exported[k].dtype == v.dtype and exported[k].shape == v.shape, k
        assert exported[k].tobytes() == v.tobytes(), k


def test_round_trip_is_bit_exact(hf_dir):
    original = load_file(str(hf_dir / "model.safetensors"))
    assert POS + "parametrizations.weight.original0" in original
    _, params = hf_import.import_hf_xcodec(hf_dir)
    _assert_bit_exact(hf_import.export_hf_state(params), original)


def test_legacy_weight_norm_and_prefix(hf_dir, tmp_path):
    legacy = {"parametrizations.weight.original0": "weight_g", "parametrizations.weight.original1": "weight_v"}

    def rename(k):
        for a, b in legacy.items():
            k = k.replace(a, b)
        return hf_import.PREFIX + k

    unrelated = {"model.embed_tokens.weight": np.zeros((4, 2), np.float32)}
    original = _rewrite(hf_dir, tmp_path / "bagpiper", rename, extra=unrelated)
    assert hf_import.PREFIX + POS + "weight_g" in original
    _, params = hf_import.import_hf_xcodec(tmp_path / "bagpiper")
    _assert_bit_exact(hf_import.export_hf_state(params, prefix=hf_import.PREFIX, weight_norm="legacy"), original)


def test_exported_directory_loads_in_hf(hf_dir, tmp_path):
    cfg, params = hf_import.import_hf_xcodec(hf_dir)
    hf_import.save_hf_xcodec(tmp_path / "out", cfg, params)
    reloaded = transformers.XcodecModel.from_pretrained(str(tmp_path / "out")).state_dict()
    original = load_file(str(hf_dir / "model.safetensors"))
    for k, v in original.items():
        assert np.array_equal(reloaded[k].numpy(), v), k
    assert hf_import.read_hf_config(tmp_path / "out") == cfg


def test_full_size_config_abstract_import():
    """The shipped default config: abstract shapes only, HF's exact parameter count, and
    our names/shapes are HF's state dict (on torch's meta device)."""
    d = transformers.XcodecConfig().to_dict()
    cfg = hf_import.config_from_hf(json.loads(json.dumps(d)))
    assert cfg == XCodecConfig()
    model = abstract_model(cfg)
    assert num_parameters(model) == 160_698_625
    with torch.device("meta"):
        hf = transformers.XcodecModel(transformers.XcodecConfig())
    assert sum(p.numel() for p in hf.parameters()) == 160_698_625
    hf_shapes = {k: tuple(v.shape) for k, v in hf.state_dict().items()}
    from bagpiper_jax.codec.params import variable_names

    ours = {hf_import.hf_key(n): tuple(v.shape) for n, v in variable_names(model).items()}
    assert ours == hf_shapes


def test_bad_checkpoints_name_the_key(hf_dir, tmp_path):
    key = "acoustic_decoder.block.1.conv_t1.weight"
    state = load_file(str(hf_dir / "model.safetensors"))
    cases = {
        "missing": ({k: v for k, v in state.items() if k != key}, "missing"),
        "shape": ({**state, key: state[key][:, :, :3].copy()}, "shape"),
        "unexpected": ({**state, "fc3.weight": state["fc.weight"]}, "no place"),
    }
    for name, (tensors, message) in cases.items():
        (tmp_path / name).mkdir()
        save_file(tensors, str(tmp_path / name / "model.safetensors"))
        (tmp_path / name / "config.json").write_text((hf_dir / "config.json").read_text())
        named = "fc3.weight" if name == "unexpected" else key
        with pytest.raises(CheckpointError) as err:
            hf_import.import_hf_xcodec(tmp_path / name)
        assert named in str(err.value) and message in str(err.value)


def test_bad_config_names_the_field(hf_dir, tmp_path):
    from bagpiper_jax.config import ConfigError

    d = json.loads((hf_dir / "config.json").read_text())
    d["semantic_model_config"]["feat_extract_norm"] = "layer"
    (tmp_path / "config.json").write_text(json.dumps(d))
    with pytest.raises(ConfigError, match="feat_extract_norm"):
        hf_import.read_hf_config(tmp_path)
    d["semantic_model_config"]["feat_extract_norm"] = "group"
    d["acoustic_model_config"]["hidden_size"] = "big"
    (tmp_path / "config.json").write_text(json.dumps(d))
    with pytest.raises(ConfigError, match="hidden_size"):
        hf_import.read_hf_config(tmp_path)


def test_convert_cli_writes_loadable_params(hf_dir, tmp_path):
    from bagpiper_jax.cli.convert import main

    assert main(["hf-xcodec", "--hf", str(hf_dir), "--out", str(tmp_path / "codec")]) == 0
    model = load_codec(tmp_path / "codec")
    cfg, params = hf_import.import_hf_xcodec(hf_dir)
    assert model.cfg == cfg
    loaded = params_from_model(model)
    assert sorted(loaded) == sorted(params)
    for k in params:
        assert loaded[k].tobytes() == params[k].tobytes(), k
    with pytest.raises(CheckpointError, match="bagpiper-convert hf-xcodec"):
        load_codec(hf_dir)
