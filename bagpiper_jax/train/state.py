"""The train state (fp32 params, optimizer state, step) and its shardings.

Only the transformer's params are trained. The frozen audio encoder is carried beside the
state (its own argument of the step): it gets no gradient and no optimizer state.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bagpiper_jax.sharding import Rules, state_shardings


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    """What a train step updates (and a run checkpoint stores, beside the data iterator)."""

    params: nnx.State
    opt_state: optax.OptState
    step: jax.Array  # int32 scalar: optimizer steps taken


def abstract_state(abstract_params: nnx.State, tx: optax.GradientTransformation) -> TrainState:
    """The state's shapes, no allocation."""
    return TrainState(abstract_params, jax.eval_shape(tx.init, abstract_params), jax.ShapeDtypeStruct((), jnp.int32))


def train_state_shardings(abstract: TrainState, mesh: Mesh, rules: Rules) -> TrainState:
    """Params and Adam moments follow the params' logical axes; scalars are replicated."""
    return TrainState(
        state_shardings(abstract.params, mesh, rules),
        state_shardings(abstract.opt_state, mesh, rules),
        NamedSharding(mesh, PartitionSpec()),
    )


def init_state(params: nnx.State, tx: optax.GradientTransformation, shardings: TrainState) -> TrainState:
    """A step-0 state around already-sharded ``params``."""
    opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
    return TrainState(params, opt_state, jax.device_put(jnp.zeros((), jnp.int32), shardings.step))
