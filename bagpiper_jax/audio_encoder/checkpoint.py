"""Saving and loading audio tower params directories (``bagpiper_jax.params_io`` format).

``DIR/config.json`` holds the :class:`AudioEncoderConfig` fields, ``DIR/params`` the Orbax
checkpoint of the tower's parameters as a nested dict (float32, the layout of
:class:`AudioTower`).
"""
from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from bagpiper_jax.audio_encoder.config import AudioEncoderConfig
from bagpiper_jax.audio_encoder.tower import AudioTower, abstract_tower, tower_from_params
from bagpiper_jax.params_io import load_config_json, load_params, save_params
from bagpiper_jax.sharding import Rules, state_shardings


def save_tower(directory: str | Path, tower: AudioTower) -> Path:
    """Writes the tower's parameters and config under ``directory``."""
    return save_params(directory, nnx.to_pure_dict(nnx.state(tower, nnx.Param)), tower.config.to_dict())


def load_config(directory: str | Path) -> AudioEncoderConfig:
    return AudioEncoderConfig.from_dict(load_config_json(directory), f"{Path(directory) / 'config.json'}")


def load_tower(directory: str | Path, dtype=jnp.float32, mesh: Mesh | None = None,
               rules: Rules | None = None) -> AudioTower:
    """Restores an :class:`AudioTower` computing in ``dtype``.

    With ``mesh`` and ``rules`` the parameters land sharded by their logical axes;
    otherwise on the default device.
    """
    config = load_config(directory)
    state = nnx.state(abstract_tower(config, dtype), nnx.Param)
    if mesh is None:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree.map(lambda _: device, nnx.to_pure_dict(state))
    else:
        shardings = nnx.to_pure_dict(state_shardings(state, mesh, rules or ()))
    target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          nnx.to_pure_dict(state), shardings)
    try:
        params = load_params(directory, target)
    except ValueError as e:
        raise ValueError(f"params in {directory} do not match its config.json: {e}") from e
    return tower_from_params(config, params, dtype)
