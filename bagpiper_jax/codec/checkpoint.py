"""Codec params directories (``params_io`` layout) and the flat name <-> module mapping.

A codec params directory holds ``config.json`` (``{"format": "bagpiper-xcodec",
"xcodec": XCodecConfig.to_dict()}``) and an Orbax checkpoint of a flat dict from
parameter name to array. Names are module paths joined by dots, which are also the HF
``XcodecModel`` keys except for the positional conv's weight norm (see ``hf_import``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bagpiper_jax.codec.config import XCodecConfig
from bagpiper_jax.codec.xcodec import XCodec
from bagpiper_jax.params_io import load_config_json, load_params, save_params

FORMAT = "bagpiper-xcodec"


class CodecCheckpointError(ValueError):
    """A codec params directory is missing, malformed or does not match its config."""


def abstract_model(cfg: XCodecConfig) -> XCodec:
    """The model with ``jax.ShapeDtypeStruct`` leaves (nothing allocated)."""
    return nnx.eval_shape(lambda: XCodec(cfg, rngs=nnx.Rngs(0)))


def variable_names(model: XCodec) -> dict[str, Any]:
    """Flat name -> variable (every ``nnx.Param`` and codebook buffer) of ``model``."""
    return {".".join(str(p) for p in path): var for path, var in nnx.to_flat_state(nnx.state(model))}


def model_from_params(cfg: XCodecConfig, params: dict[str, Any], source: str = "params") -> XCodec:
    """Builds the model from a flat name -> array dict; every name must be present with the
    right shape, and no other names are allowed."""
    model = abstract_model(cfg)
    graphdef, state = nnx.split(model)
    names = variable_names(model)
    missing = sorted(set(names) - set(params))
    extra = sorted(set(params) - set(names))
    if missing or extra:
        raise CodecCheckpointError(f"{source} does not match the XCodec config: missing {missing[:5]}"
                                   f"{' ...' if len(missing) > 5 else ''}, unexpected {extra[:5]}"
                                   f"{' ...' if len(extra) > 5 else ''}")
    flat = []
    for path, var in nnx.to_flat_state(state):
        name = ".".join(str(p) for p in path)
        value = params[name]
        if tuple(value.shape) != tuple(var.shape):
            raise CodecCheckpointError(f"{source}: {name!r} has shape {tuple(value.shape)}, "
                                       f"expected {tuple(var.shape)}")
        flat.append((path, var.replace(jnp.asarray(value, var.dtype))))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def params_from_model(model: XCodec) -> dict[str, np.ndarray]:
    """Flat name -> host array of every variable of ``model``."""
    return {name: np.asarray(jax.device_get(var[...])) for name, var in variable_names(model).items()}


def save_codec(directory: str | Path, cfg: XCodecConfig, params: dict[str, Any]) -> Path:
    return save_params(directory, params, {"format": FORMAT, "xcodec": cfg.to_dict()})


def load_codec_config(directory: str | Path) -> XCodecConfig:
    try:
        meta = load_config_json(directory)
    except FileNotFoundError as e:
        raise CodecCheckpointError(str(e)) from e
    if meta.get("format") != FORMAT:
        hint = (" (it looks like an HF XCodec directory: convert it with `bagpiper-convert hf-xcodec`)"
                if meta.get("model_type") == "xcodec" else "")
        raise CodecCheckpointError(f"{Path(directory) / 'config.json'} is not a codec params config{hint}")
    return XCodecConfig.from_dict(meta["xcodec"], source=str(Path(directory) / "config.json"))


def load_codec(directory: str | Path) -> XCodec:
    """Loads a codec params directory written by ``bagpiper-convert hf-xcodec``."""
    cfg = load_codec_config(directory)
    try:
        params = load_params(directory)
    except FileNotFoundError as e:
        raise CodecCheckpointError(str(e)) from e
    return model_from_params(cfg, params, source=str(directory))
