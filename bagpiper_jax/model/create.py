"""Building the model abstractly (no allocation) or directly sharded on a mesh."""

from __future__ import annotations

import jax
from flax import nnx
from jax.sharding import Mesh

from bagpiper_jax.config import ModelConfig, RuntimeConfig
from bagpiper_jax.model.bagpiper import Bagpiper
from bagpiper_jax.sharding import Rules, state_shardings


def abstract_model(
    cfg: ModelConfig, runtime: RuntimeConfig = RuntimeConfig(), rules: Rules = ()
) -> tuple[nnx.GraphDef, nnx.State]:
    """Graph definition and a state of ``jax.ShapeDtypeStruct`` (nothing allocated)."""
    return nnx.split(nnx.eval_shape(lambda: Bagpiper(cfg, runtime, rules, rngs=nnx.Rngs(0))))


def init_model(cfg: ModelConfig, runtime: RuntimeConfig, mesh: Mesh, rules: Rules, seed: int = 0):
    """Randomly initialised params, created directly in their shards.

    Returns ``(graphdef, state, shardings)``; ``shardings`` mirrors ``state``.
    """
    graphdef, abstract = abstract_model(cfg, runtime, rules)
    shardings = state_shardings(abstract, mesh, rules)

    @jax.jit
    def create():
        return nnx.state(Bagpiper(cfg, runtime, rules, rngs=nnx.Rngs(seed)))

    with jax.set_mesh(mesh):
        state = jax.jit(create, out_shardings=shardings)()
    return graphdef, state, shardings
