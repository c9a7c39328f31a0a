"""Ahead-of-time compile of the train step on abstract inputs, for any devices.

Nothing is allocated: the train state, the frozen audio tower and the batch are
``jax.ShapeDtypeStruct`` s carrying their shardings, so the 8B step compiles on a CPU host,
including for a TPU pod slice described by :func:`tpu_devices` (compile-only devices from
``libtpu``; no TPU needed); the step is :func:`bagpiper_jax.train.program.build_program`.
The compiled step's ``memory_analysis()`` gives per-device HBM.

    program, compiled, seconds = compile_step(cfg, tpu_devices("v5p:4x4x8"))
    device_memory_gib(compiled)  # {"argument_gib": ..., "temp_gib": ..., "total_gib": ...}
"""

from __future__ import annotations

import importlib.util
import os

import jax
import numpy as np
from jax.experimental import topologies

from bagpiper_jax.audio_encoder.frozen import FrozenTower
from bagpiper_jax.config import Config
from bagpiper_jax.sharding import make_mesh
from bagpiper_jax.train.program import TrainProgram, build_program
from bagpiper_jax.train.step import compiled_memory_gib

# HBM per chip (GiB, the figures Google publishes) by jax device_kind.
HBM_GIB = {"TPU v4": 32, "TPU v5 lite": 16, "TPU v5": 95, "TPU v6 lite": 32}


def tpu_devices(topology: str) -> list[jax.Device]:
    """Compile-only devices of a TPU slice, e.g. ``"v5p:4x4x8"`` (128 chips) or
    ``"v6e:16x16"`` (256 chips). Needs ``libtpu`` (``pip install "jax[tpu]==<jax version>"``),
    not a TPU. Several processes may do this at once (libtpu's single-user lock is waived:
    nothing runs on a chip)."""
    if importlib.util.find_spec("libtpu") is None:
        raise RuntimeError(f'AOT compilation for TPU needs libtpu: pip install "jax[tpu]=={jax.__version__}"')
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        return list(topologies.get_topology_desc(platform="tpu", topology_name=topology).devices)
    except RuntimeError as e:
        raise RuntimeError(f"cannot describe TPU topology {topology!r}: {e}") from e


def compile_step(
    cfg: Config, devices: list[jax.Device], encoder: bool = True
) -> tuple[TrainProgram, jax.stages.Compiled, float]:
    """``cfg``'s train step compiled for ``devices`` (real or compile-only) on abstract
    inputs, with the frozen Qwen3-Omni audio tower inside unless ``encoder`` is False:
    ``(program, compiled, seconds)``."""
    mesh = make_mesh(cfg.mesh, devices)
    tower = FrozenTower.abstract(mesh, cfg.mesh.rules, dtype=cfg.runtime.encoder_dtype) if encoder else None
    program = build_program(cfg, mesh, tower)
    compiled, seconds = program.compile()
    return program, compiled, seconds


def device_memory_gib(compiled) -> dict:
    """:func:`compiled_memory_gib` plus the bytes aliased between donated arguments and outputs
    and ``total_gib`` = arguments + outputs + temporaries - aliased: the step's peak HBM per
    device (generated code excluded)."""
    memory = compiled_memory_gib(compiled)
    analysis = compiled.memory_analysis()
    if analysis is None:
        return memory
    alias = analysis.alias_size_in_bytes
    total = analysis.argument_size_in_bytes + analysis.output_size_in_bytes + analysis.temp_size_in_bytes - alias
    return {**memory, "alias_gib": round(alias / 2**30, 3), "total_gib": round(total / 2**30, 3)}


def per_device_gib(tree, shardings) -> float:
    """GiB of ``tree`` (abstract or real arrays) on one device under ``shardings`` (a tree of
    ``NamedSharding`` s of the same structure), e.g. the optimizer state's share per chip."""
    shapes = [sharding.shard_shape(x.shape) for x, sharding in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings))]
    sizes = [int(np.prod(shape)) * np.dtype(x.dtype).itemsize for shape, x in zip(shapes, jax.tree.leaves(tree))]
    return round(sum(sizes) / 2**30, 3)
