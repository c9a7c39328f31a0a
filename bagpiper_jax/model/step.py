"""Jitted loss-and-gradient with explicit shardings (the core of the train step)."""
from __future__ import annotations

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from bagpiper_jax.model.bagpiper import Batch
from bagpiper_jax.sharding import Rules, logical_to_spec

BATCH_AXES = {
    "ids": ("activation_batch", "activation_length", None),
    "segment_ids": ("activation_batch", "activation_length"),
    "positions": ("activation_batch", "activation_length"),
    "loss_mask": ("activation_batch", "activation_length", None),
    "continuous": ("activation_batch", None, None),
    "continuous_frames": ("activation_batch", None),
}


def batch_shardings(batch: Batch, mesh: Mesh, rules: Rules) -> Batch:
    """NamedShardings for every field of ``batch`` (None fields stay None)."""
    return Batch(**{name: None if getattr(batch, name) is None
                    else NamedSharding(mesh, logical_to_spec(axes, rules))
                    for name, axes in BATCH_AXES.items()})


def loss_fn(graphdef: nnx.GraphDef, params: nnx.State, batch: Batch):
    """``(loss, metrics)`` of the model rebuilt from ``graphdef`` and ``params``."""
    return nnx.merge(graphdef, params).loss(batch)


def jit_loss_and_grad(graphdef: nnx.GraphDef, param_shardings: nnx.State, batch_sharding: Batch,
                      mesh: Mesh):
    """``f(params, batch) -> ((loss, metrics), grads)`` jitted with explicit shardings;
    gradients are sharded like the params. Call it (or ``.lower``) inside
    ``jax.set_mesh(mesh)``."""
    replicated = NamedSharding(mesh, jax.sharding.PartitionSpec())
    grad_fn = jax.value_and_grad(lambda p, b: loss_fn(graphdef, p, b), has_aux=True)
    return jax.jit(grad_fn, in_shardings=(param_shardings, batch_sharding),
                   out_shardings=((replicated, replicated), param_shardings))
