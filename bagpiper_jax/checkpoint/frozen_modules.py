"""Params directories of the frozen modules: the XCodec codec and the audio tower.

Both are :mod:`~bagpiper_jax.checkpoint.params_dir` directories: the codec's params are a
flat dict from parameter name to array (:mod:`bagpiper_jax.codec.params`), the tower's a
nested dict in the layout of :class:`~bagpiper_jax.audio_encoder.tower.AudioTower`
(float32). ``bagpiper-convert hf-xcodec`` / ``hf-audio-encoder`` write them; the run
config names them in ``assets.codec`` / ``assets.audio_encoder``.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from bagpiper_jax.audio_encoder.config import AudioEncoderConfig
from bagpiper_jax.audio_encoder.frozen import FrozenTower
from bagpiper_jax.audio_encoder.tower import AudioTower, abstract_tower, tower_from_params
from bagpiper_jax.checkpoint.errors import CheckpointError
from bagpiper_jax.checkpoint.params_dir import load_params, read_info, save_params
from bagpiper_jax.codec.config import XCodecConfig
from bagpiper_jax.codec.params import CodecParamsError, model_from_params
from bagpiper_jax.codec.xcodec import XCodec
from bagpiper_jax.config import Config, ConfigError, from_dict, to_dict
from bagpiper_jax.sharding import Rules, state_shardings, with_shardings


def save_codec(directory: str | Path, cfg: XCodecConfig, params: dict) -> Path:
    """Writes a codec params directory (``params``: flat name -> array)."""
    return save_params(directory, params, "xcodec", to_dict(cfg))


def load_codec_config(directory: str | Path) -> XCodecConfig:
    return _module_config(XCodecConfig, directory, "xcodec")


def load_codec(directory: str | Path) -> XCodec:
    """The codec of a params directory (``bagpiper-convert hf-xcodec`` output)."""
    cfg = load_codec_config(directory)
    try:
        return model_from_params(cfg, load_params(directory), source=str(directory))
    except CodecParamsError as e:
        raise CheckpointError(str(e)) from e


def save_tower(directory: str | Path, tower: AudioTower) -> Path:
    """Writes the tower's parameters and config under ``directory``."""
    return save_tower_params(directory, tower.config, nnx.to_pure_dict(nnx.state(tower, nnx.Param)))


def save_tower_params(directory: str | Path, config: AudioEncoderConfig, params: dict) -> Path:
    """Writes an audio tower params directory (``params``: nested dict of arrays)."""
    return save_params(directory, params, "audio_encoder", to_dict(config))


def load_tower_config(directory: str | Path) -> AudioEncoderConfig:
    return _module_config(AudioEncoderConfig, directory, "audio_encoder")


def load_tower(
    directory: str | Path, dtype=jnp.float32, mesh: Mesh | None = None, rules: Rules | None = None
) -> AudioTower:
    """Restores an :class:`AudioTower` computing in ``dtype``; with ``mesh`` and ``rules``
    the parameters land sharded by their logical axes, otherwise on the default device."""
    config = load_tower_config(directory)
    state = nnx.state(abstract_tower(config, dtype), nnx.Param)
    if mesh is None:
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        shardings = jax.tree.map(lambda _: device, nnx.to_pure_dict(state))
    else:
        shardings = nnx.to_pure_dict(state_shardings(state, mesh, rules or ()))
    params = load_params(directory, with_shardings(nnx.to_pure_dict(state), shardings))
    return tower_from_params(config, params, dtype)


def load_frozen_tower(cfg: Config, mesh: Mesh) -> FrozenTower | None:
    """The run's frozen audio tower (``assets.audio_encoder``, computing in
    ``runtime.encoder_dtype``) sharded on ``mesh``, checked to fit the model and the data's
    pieces; None when the config names none."""
    directory = cfg.assets.audio_encoder
    if not directory:
        return None
    tower = load_tower(directory, jnp.dtype(cfg.runtime.encoder_dtype), mesh, cfg.mesh.rules)
    frozen = FrozenTower.from_tower(tower, mesh, cfg.mesh.rules)
    frozen.check_fits(cfg.model.continuous_dim, cfg.data.piece_frames, f"assets.audio_encoder={directory}")
    return frozen


def _module_config(cls: type, directory: str | Path, kind: str):
    info = read_info(directory, kind)
    try:
        return from_dict(cls, info.config, str(Path(directory) / "config.json"))
    except ConfigError as e:
        raise CheckpointError(str(e)) from e
