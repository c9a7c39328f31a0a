"""Params directories: the one format of converted weights, and the directories written
before it (codec, audio tower, model checkpoint) still read."""

import json

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from helpers import tiny_config

from bagpiper_jax.audio_encoder.tower import AudioTower
from bagpiper_jax.checkpoint.errors import CheckpointError
from bagpiper_jax.checkpoint.frozen_modules import load_codec, load_tower, save_codec, save_tower
from bagpiper_jax.checkpoint.lazy_save import save_pytree
from bagpiper_jax.checkpoint.model_checkpoint import ParamsSource, is_model_checkpoint
from bagpiper_jax.checkpoint.params_dir import read_info
from bagpiper_jax.codec.params import params_from_model
from bagpiper_jax.codec.xcodec import XCodec
from bagpiper_jax.config import to_dict
from bagpiper_jax.data.demo import tiny_codec_config, tiny_encoder_config
from bagpiper_jax.model.create import init_model
from bagpiper_jax.sharding import make_mesh


def save_legacy_params(directory, params, config: dict):
    """What params_io.save_params wrote: an Orbax checkpoint of the params + config.json."""
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(directory / "params", params, force=True)
        ckptr.wait_until_finished()
    (directory / "config.json").write_text(json.dumps(config))


def same(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def test_frozen_modules_round_trip_in_the_current_format(tmp_path):
    codec = XCodec(tiny_codec_config(), rngs=nnx.Rngs(0))
    save_codec(tmp_path / "codec", codec.cfg, params_from_model(codec))
    info = read_info(tmp_path / "codec")
    assert (info.kind, info.config) == ("xcodec", to_dict(codec.cfg))
    same(params_from_model(load_codec(tmp_path / "codec")), params_from_model(codec))
    tower = AudioTower(tiny_encoder_config(32, 800), rngs=nnx.Rngs(0))
    save_tower(tmp_path / "tower", tower)
    assert read_info(tmp_path / "tower").kind == "audio_encoder"
    same(nnx.state(load_tower(tmp_path / "tower"), nnx.Param), nnx.state(tower, nnx.Param))
    with pytest.raises(CheckpointError, match="holds audio_encoder params, expected xcodec"):
        load_codec(tmp_path / "tower")


def test_legacy_codec_and_tower_directories_read(tmp_path):
    codec = XCodec(tiny_codec_config(), rngs=nnx.Rngs(1))
    (tmp_path / "codec").mkdir()
    save_legacy_params(
        tmp_path / "codec", params_from_model(codec), {"format": "bagpiper-xcodec", "xcodec": to_dict(codec.cfg)}
    )
    assert load_codec(tmp_path / "codec").cfg == codec.cfg
    same(params_from_model(load_codec(tmp_path / "codec")), params_from_model(codec))
    tower = AudioTower(tiny_encoder_config(32, 800), rngs=nnx.Rngs(1))
    (tmp_path / "tower").mkdir()
    save_legacy_params(tmp_path / "tower", nnx.to_pure_dict(nnx.state(tower, nnx.Param)), to_dict(tower.config))
    assert load_tower(tmp_path / "tower").config == tower.config
    same(nnx.state(load_tower(tmp_path / "tower"), nnx.Param), nnx.state(tower, nnx.Param))


def test_legacy_model_checkpoint_reads(tmp_path):
    """bagpiper-model config.json + config_resolved.json (its config in the layout before
    the runtime/assets split) + params/."""
    cfg = tiny_config()
    mesh = make_mesh(cfg.mesh, jax.devices()[:1])
    _, params, _ = init_model(cfg.model, cfg.runtime, mesh, cfg.mesh.rules, seed=5)
    ckpt = tmp_path / "ckpt"
    save_pytree(ckpt / "params", params)
    (ckpt / "config.json").write_text(json.dumps({"format": "bagpiper-model", "step": 3, "source": "test"}))
    old = to_dict(cfg)
    old["model"].update(remat=old["runtime"].pop("remat"), max_frames=old["runtime"].pop("max_frames"))
    (ckpt / "config_resolved.json").write_text(json.dumps(old))
    assert is_model_checkpoint(ckpt)
    source = ParamsSource(ckpt)
    assert source.step == 3 and source.config.model == cfg.model and source.config.runtime == cfg.runtime
    same(nnx.to_pure_dict(source.restore(cfg, mesh)[1]), nnx.to_pure_dict(params))


def test_hf_directories_are_refused_with_the_converting_command(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "xcodec"}))
    with pytest.raises(CheckpointError, match="convert it with `bagpiper-convert hf-xcodec`"):
        load_codec(tmp_path)
    with pytest.raises(CheckpointError, match="config.json not found"):
        load_tower(tmp_path / "nowhere")
