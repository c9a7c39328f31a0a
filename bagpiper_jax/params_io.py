"""Orbax params checkpoints for converted, frozen modules (codec, audio encoder).

Layout of a params directory::

    DIR/config.json   the module's config (JSON object)
    DIR/params/       Orbax checkpoint of a nested dict of arrays
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


def save_params(directory: str | Path, params: Any, config: dict) -> Path:
    """Writes ``params`` (a pytree of arrays) and ``config`` under ``directory``."""
    directory = Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(directory / "params", params, force=True)
        ckptr.wait_until_finished()
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    return directory


def load_config_json(directory: str | Path) -> dict:
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: {directory} is not a params directory")
    return json.loads(path.read_text())


def load_params(directory: str | Path, target: Any = None) -> Any:
    """Restores params; ``target`` (a pytree of ``jax.ShapeDtypeStruct`` with shardings)
    places them on a mesh, otherwise they land on the default device."""
    directory = Path(directory).absolute()
    if not (directory / "params").is_dir():
        raise FileNotFoundError(f"{directory / 'params'} missing: {directory} is not a params directory")
    with ocp.StandardCheckpointer() as ckptr:
        if target is None:
            meta = ckptr.metadata(directory / "params")
            tree = meta.item_metadata.tree if hasattr(meta, "item_metadata") else meta
            device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
            target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)
        return ckptr.restore(directory / "params", target)
