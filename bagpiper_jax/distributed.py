"""Multi-process start-up: ``jax.distributed`` from the environment.

- TPU pods, SLURM and other clusters JAX recognises: set ``BAGPIPER_DISTRIBUTED=auto`` and
  every host calls ``jax.distributed.initialize()``, which detects the cluster.
- Explicit (GPU nodes, CPU tests): ``BAGPIPER_COORDINATOR=host:port``,
  ``BAGPIPER_NUM_PROCESSES`` and ``BAGPIPER_PROCESS_ID``. On CPU the collectives use gloo.
- Neither: a single process.
Call before anything touches a device.
"""

from __future__ import annotations

import os

import jax


def initialize_from_env() -> None:
    if jax.distributed.is_initialized():
        return
    if os.environ.get("BAGPIPER_DISTRIBUTED") == "auto":
        jax.distributed.initialize()
        return
    coordinator = os.environ.get("BAGPIPER_COORDINATOR")
    if not coordinator:
        return
    if os.environ.get("JAX_PLATFORMS", "").startswith("cpu"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator,
        num_processes=int(os.environ["BAGPIPER_NUM_PROCESSES"]),
        process_id=int(os.environ["BAGPIPER_PROCESS_ID"]),
    )
