"""The transformer params to generate with, from any kind of Bagpiper checkpoint.

Accepted: a model checkpoint (``bagpiper-convert`` output), a run directory (its latest
complete step) or one step of a run (``<run_dir>/checkpoints/<step>``); see
:class:`bagpiper_jax.convert.model_checkpoint.ParamsSource`. A run checkpoint is restored
partially: only the params, never the optimizer state.
"""
from __future__ import annotations

from pathlib import Path

from flax import nnx
from jax.sharding import Mesh

from bagpiper_jax.config import Config
from bagpiper_jax.convert.model_checkpoint import ParamsSource
from bagpiper_jax.convert.tensor_reader import CheckpointError


def load_generation_params(path: str | Path, cfg: Config, mesh: Mesh) -> tuple[nnx.GraphDef, nnx.State]:
    """``(graphdef, params)`` of the checkpoint at ``path``, sharded on ``mesh`` by ``cfg``'s
    rules; ``cfg.model`` must match the checkpoint's shapes (the error names each field)."""
    if not Path(path).exists():
        raise CheckpointError(f"checkpoint {Path(path).absolute()} does not exist")
    return ParamsSource(path).restore(cfg.model, mesh, cfg.mesh.rules)
