"""The train state (fp32 params, optimizer state, step) and its shardings.

Only the transformer's params are trained, and of those only the ``train.trainable`` ones
(:mod:`bagpiper_jax.train.trainable`): the optimizer state covers those alone. The frozen
audio encoder is carried beside the state (its own argument of the step): it gets no
gradient and no optimizer state.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bagpiper_jax.sharding import Rules, state_shardings
from bagpiper_jax.train.trainable import TrainableParams, trainable_or_all


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    """What a train step updates (and a run checkpoint stores, beside the data iterator)."""

    params: nnx.State  # all the transformer's params, frozen ones included
    opt_state: optax.OptState  # of the trainable params only
    step: jax.Array  # int32 scalar: steps taken (batches consumed, skipped non-finite steps included)


def abstract_state(
    abstract_params: nnx.State, tx: optax.GradientTransformation, trainable: TrainableParams | None = None
) -> TrainState:
    """The state's shapes, no allocation (``trainable``: default every param)."""
    trained = trainable_or_all(trainable, abstract_params).split(abstract_params)[0]
    return TrainState(abstract_params, jax.eval_shape(tx.init, trained), jax.ShapeDtypeStruct((), jnp.int32))


def train_state_shardings(abstract: TrainState, mesh: Mesh, rules: Rules) -> TrainState:
    """Params and Adam moments follow the params' logical axes; scalars are replicated."""
    return TrainState(
        state_shardings(abstract.params, mesh, rules),
        state_shardings(abstract.opt_state, mesh, rules),
        NamedSharding(mesh, PartitionSpec()),
    )


def init_state(
    params: nnx.State,
    tx: optax.GradientTransformation,
    shardings: TrainState,
    trainable: TrainableParams | None = None,
) -> TrainState:
    """A step-0 state around already-sharded ``params``: a fresh optimizer state for the
    ``trainable`` ones (default: every param)."""
    trainable = trainable_or_all(trainable, params)
    opt_state = jax.jit(lambda p: tx.init(trainable.split(p)[0]), out_shardings=shardings.opt_state)(params)
    return TrainState(params, opt_state, jax.device_put(jnp.zeros((), jnp.int32), shardings.step))
