"""The jitted train and eval steps.

A step takes the train state, the frozen audio tower's params (or ``None``) and a packed
:class:`~bagpiper_jax.model.batch.Batch` of global arrays. Gradient accumulation splits
the batch rows into ``grad_accum`` strided micro-batches (each device keeps an equal share
of every micro-batch) and scans over them; every micro-batch loss is divided by the whole
batch's loss positions, so the summed gradient equals the gradient of one big batch.

Gradients are taken with respect to the trainable params only
(:mod:`bagpiper_jax.train.trainable`), and a step whose loss or gradients are not finite
leaves the params and optimizer state as they were (:mod:`bagpiper_jax.train.nonfinite`).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bagpiper_jax.audio_encoder.frozen import FrozenTower
from bagpiper_jax.model.batch import Batch
from bagpiper_jax.model.loss import loss_positions, stream_metrics
from bagpiper_jax.train.nonfinite import all_finite, keep_if_finite
from bagpiper_jax.train.state import TrainState
from bagpiper_jax.train.trainable import TrainableParams, trainable_or_all


def _add(a, b):
    return jax.tree.map(jnp.add, a, b)


def _model_loss(
    graphdef: nnx.GraphDef,
    params,
    tower: FrozenTower | None,
    tower_params,
    batch: Batch,
    num_sources: int,
    denominator=None,
):
    """``(loss, metric sums)`` of the model rebuilt from ``graphdef`` and ``params``, its
    continuous audio encoded by the frozen ``tower``, per-source sums over ``num_sources``."""
    continuous = None if tower is None or batch.pieces is None else tower.encode(tower_params, batch.pieces)
    return nnx.merge(graphdef, params).loss(batch, continuous, denominator, num_sources)


def make_train_step(
    graphdef: nnx.GraphDef,
    tower: FrozenTower | None,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    grad_accum: int,
    num_sources: int = 1,
    trainable: TrainableParams | None = None,
) -> Callable:
    """``step(state, tower_params, batch) -> (state, metrics)`` (not yet jitted); the
    metrics include per-source loss and frames over ``num_sources`` mixture sources and
    ``finite`` (whether the update was applied). ``trainable``: the params that train
    (default: all); the state's optimizer state must cover exactly those."""

    def step(state: TrainState, tower_params, batch: Batch):
        vocab = nnx.merge(graphdef, state.params).vocab
        denominator = loss_positions(batch.ids, batch.loss_mask, batch.segment_ids, vocab)
        split = trainable_or_all(trainable, state.params)
        trained, frozen = split.split(state.params)

        def micro_grads(micro: Batch):
            def loss_fn(trained_params):
                params = split.merge(trained_params, frozen)
                return _model_loss(graphdef, params, tower, tower_params, micro, num_sources, denominator)

            (_, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(trained)
            return grads, sums

        if grad_accum == 1:
            grads, sums = micro_grads(batch)
        else:
            rows = batch.rows
            micro = jax.tree.map(
                lambda x: x.reshape(rows // grad_accum, grad_accum, *x.shape[1:]).swapaxes(0, 1), batch
            )
            first = jax.tree.map(lambda x: x[0], micro)
            rest = jax.tree.map(lambda x: x[1:], micro)
            (grads, sums), _ = jax.lax.scan(
                lambda acc, mb: (_add(acc, micro_grads(mb)), None), micro_grads(first), rest
            )
        updates, opt_state = tx.update(grads, state.opt_state, trained)
        metrics = stream_metrics(sums)
        finite = all_finite(metrics["loss"], grads)
        trained, opt_state = keep_if_finite(
            finite, (optax.apply_updates(trained, updates), opt_state), (trained, state.opt_state)
        )
        metrics.update(grad_norm=optax.tree.norm(grads), lr=schedule(state.step), finite=finite)
        return TrainState(split.merge(trained, frozen), opt_state, state.step + 1), metrics

    return step


def make_eval_step(graphdef: nnx.GraphDef, tower: FrozenTower | None, num_sources: int = 1) -> Callable:
    """``eval_step(params, tower_params, batch) -> metric sums`` (accumulate, then
    :func:`bagpiper_jax.model.loss.stream_metrics`)."""

    def eval_step(params, tower_params, batch: Batch):
        return _model_loss(graphdef, params, tower, tower_params, batch, num_sources)[1]

    return eval_step


def jit_steps(
    train_step: Callable,
    eval_step: Callable,
    state_shardings: TrainState,
    tower_shardings,
    batch_shardings: Batch,
    mesh: Mesh,
):
    """Both steps jitted with explicit in/out shardings; the train state is donated."""
    replicated = NamedSharding(mesh, PartitionSpec())
    train = jax.jit(
        train_step,
        in_shardings=(state_shardings, tower_shardings, batch_shardings),
        out_shardings=(state_shardings, replicated),
        donate_argnums=(0,),
    )
    evaluate = jax.jit(
        eval_step, in_shardings=(state_shardings.params, tower_shardings, batch_shardings), out_shardings=replicated
    )
    return train, evaluate


def compiled_memory_gib(compiled) -> dict:
    """Per-device argument / output / temp memory (GiB) of a compiled step, from XLA's
    ``memory_analysis()`` ({} where the backend gives none)."""
    mem = compiled.memory_analysis()
    if mem is None:
        return {}
    return {
        k.replace("_in_bytes", "_gib"): round(getattr(mem, k) / 2**30, 3)
        for k in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes")
        if hasattr(mem, k)
    }
