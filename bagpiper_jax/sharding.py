"""Device mesh and logical-axis sharding.

Parameters and activations are annotated with *logical* axis names ("embed", "mlp",
"activation_batch", ...). A rules table (``MeshConfig.rules``) maps each logical name to
mesh axes; this module turns annotations into ``PartitionSpec``/``NamedSharding``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from bagpiper_jax.config import ConfigError, MeshConfig

Rules = tuple[tuple[str, Any], ...]


def make_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds the (data, fsdp, tensor) mesh; one axis may be -1 (fill the rest)."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = list(cfg.axis_sizes)
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ConfigError(f"mesh axes {dict(zip(cfg.axis_names, sizes))} do not divide {len(devices)} devices")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ConfigError(
            f"mesh {dict(zip(cfg.axis_names, sizes))} needs {math.prod(sizes)} devices, have {len(devices)}"
        )
    if len(devices) == len(jax.devices()):
        return jax.make_mesh(tuple(sizes), cfg.axis_names, axis_types=(AxisType.Auto,) * len(sizes), devices=devices)
    return Mesh(np.asarray(devices).reshape(sizes), cfg.axis_names, axis_types=(AxisType.Auto,) * len(sizes))


def logical_to_spec(axes: Sequence[str | None], rules: Rules) -> PartitionSpec:
    """Maps logical axis names to a PartitionSpec; a mesh axis is used at most once."""
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for name in axes:
        target = table.get(name) if name is not None else None
        targets = tuple(t for t in (target if isinstance(target, tuple) else (target,)) if t is not None)
        targets = tuple(t for t in targets if t not in used)
        used.update(targets)
        spec.append(None if not targets else targets[0] if len(targets) == 1 else targets)
    return PartitionSpec(*spec)


def batch_shards(mesh: Mesh, rules: Rules) -> int:
    """How many ways the mesh splits batch rows (the mesh axes ``activation_batch`` maps to)."""
    return math.prod(mesh.shape[a] for a in jax.tree.leaves(tuple(logical_to_spec(("activation_batch",), rules))))


def state_shardings(state: nnx.State, mesh: Mesh, rules: Rules) -> nnx.State:
    """NamedShardings for every variable of an (abstract) NNX state, from its ``out_sharding``."""
    specs = nnx.get_partition_spec(state)

    def to_sharding(leaf):
        axes = tuple(leaf) if isinstance(leaf, PartitionSpec) else ()
        return NamedSharding(mesh, logical_to_spec(axes, rules))

    return jax.tree.map(to_sharding, specs, is_leaf=lambda x: isinstance(x, PartitionSpec))


def constrain(x: jax.Array, axes: Sequence[str | None], rules: Rules) -> jax.Array:
    """Sharding constraint by logical names under the ambient mesh (no-op without one)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(axes, rules))


def param(value: jax.Array, axes: Sequence[str | None]) -> nnx.Param:
    """An ``nnx.Param`` annotated with logical axis names (sharded later, not eagerly)."""
    if len(axes) != value.ndim:
        raise ValueError(f"logical axes {tuple(axes)} do not match a parameter of shape {value.shape}")
    return nnx.Param(value, out_sharding=tuple(axes), eager_sharding=False)


def with_shardings(abstract, shardings):
    """``jax.ShapeDtypeStruct`` s of ``abstract`` carrying ``shardings`` (same tree): the
    targets of an AOT compile or a checkpoint restore."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
