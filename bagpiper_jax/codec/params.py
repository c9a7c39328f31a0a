"""The codec's params as a flat dict: parameter name <-> model variable.

Names are module paths joined by dots, which are also the HF ``XcodecModel`` keys except
for the positional conv's weight norm (see :mod:`bagpiper_jax.convert.hf_xcodec`). A codec
params directory (:mod:`bagpiper_jax.checkpoint.frozen_modules`) stores this dict.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bagpiper_jax.codec.config import XCodecConfig
from bagpiper_jax.codec.xcodec import XCodec
from bagpiper_jax.errors import BagpiperError


class CodecParamsError(BagpiperError):
    """Codec params do not match the codec's config; the message names the parameter."""


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
        raise CodecParamsError(
            f"{source} does not match the XCodec config: missing {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}, unexpected {extra[:5]}"
            f"{' ...' if len(extra) > 5 else ''}"
        )
    flat = []
    for path, var in nnx.to_flat_state(state):
        name = ".".join(str(p) for p in path)
        value = params[name]
        if tuple(value.shape) != tuple(var.shape):
            raise CodecParamsError(f"{source}: {name!r} has shape {tuple(value.shape)}, expected {tuple(var.shape)}")
        flat.append((path, var.replace(jnp.asarray(value, var.dtype))))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def params_from_model(model: XCodec) -> dict[str, np.ndarray]:
    """Flat name -> host array of every variable of ``model``."""
    return {name: np.asarray(jax.device_get(var[...])) for name, var in variable_names(model).items()}
