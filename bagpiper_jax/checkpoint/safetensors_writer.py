"""Streaming safetensors output: tensors are written one at a time, straight to disk.

The shapes and dtypes of all tensors are known up front (a *plan*), so each file's header
is written first and every tensor's bytes follow as soon as it is produced, in blocks of
rows (a transposed view or a dtype cast is never copied whole). Above ``max_shard_size`` bytes the output is
split into ``model-0000i-of-0000N.safetensors`` files with a
``model.safetensors.index.json`` (the HF layout, read by :class:`TensorReader` and
``transformers``); a tensor larger than the threshold gets a file of its own.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import ml_dtypes
import numpy as np

from bagpiper_jax.checkpoint.errors import CheckpointError
from bagpiper_jax.checkpoint.tensor_reader import SAFETENSORS_DTYPES

_DTYPE_NAMES = {np.dtype(v): k for k, v in SAFETENSORS_DTYPES.items()}
_BF16 = np.dtype(ml_dtypes.bfloat16)
INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One tensor of a write plan: name, shape and the dtype it is written in."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize


def plan_shards(specs: list[TensorSpec], max_shard_size: int | None) -> list[list[TensorSpec]]:
    """Consecutive groups of ``specs`` of at most ``max_shard_size`` bytes each (None: one)."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if max_shard_size is not None and shards[-1] and size + spec.nbytes > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return shards


def _header(specs: list[TensorSpec], metadata: dict[str, str]) -> bytes:
    entries, offset = {"__metadata__": metadata}, 0
    for spec in specs:
        if np.dtype(spec.dtype) not in _DTYPE_NAMES:
            raise CheckpointError(f"tensor {spec.name!r}: dtype {spec.dtype} cannot be stored in safetensors")
        entries[spec.name] = {
            "dtype": _DTYPE_NAMES[np.dtype(spec.dtype)],
            "shape": list(spec.shape),
            "data_offsets": [offset, offset + spec.nbytes],
        }
        offset += spec.nbytes
    raw = json.dumps(entries, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
    return len(raw).to_bytes(8, "little") + raw


def write_safetensors(
    out: str | Path,
    specs: list[TensorSpec],
    tensors: Iterable[tuple[str, np.ndarray]],
    max_shard_size: int | None = None,
    metadata: dict[str, str] | None = None,
    progress: Callable[[int], None] = lambda nbytes: None,
) -> list[Path]:
    """Writes the tensors of ``specs`` as they come from ``tensors`` (same order).

    Args:
      out: a ``*.safetensors`` file (never sharded), or a directory that gets
        ``model.safetensors`` or, above ``max_shard_size`` bytes, numbered shards + index.
      specs: name, shape and dtype of every tensor, in the order ``tensors`` yields them.
      tensors: ``(name, array)`` pairs matching the specs' names and shapes; floats are cast
        to the spec's dtype block by block (arrays may be non-contiguous views).
      progress: called with the byte count of every tensor written.
    Returns the files written.
    """
    out = Path(out)
    metadata = {"format": "pt", **(metadata or {})}
    if out.suffix == ".safetensors":
        out.parent.mkdir(parents=True, exist_ok=True)
        shards, names = [specs], [out.name]
    else:
        out.mkdir(parents=True, exist_ok=True)
        shards = plan_shards(specs, max_shard_size)
        names = (
            [SINGLE]
            if len(shards) == 1
            else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        )
    source: Iterator = iter(tensors)
    files = []
    for shard, name in zip(shards, names):
        path = out.parent / name if out.suffix == ".safetensors" else out / name
        with open(path, "wb") as f:
            f.write(_header(shard, metadata))
            for spec in shard:
                write_tensor(f, spec, next(source, None))
                progress(spec.nbytes)
        files.append(path)
    if next(source, None) is not None:
        raise CheckpointError(f"more tensors were produced than planned for {out}")
    if len(shards) > 1:
        weight_map = {spec.name: name for shard, name in zip(shards, names) for spec in shard}
        (out / INDEX).write_text(
            json.dumps({"metadata": {"total_size": sum(s.nbytes for s in specs)}, "weight_map": weight_map}, indent=2)
        )
        files.append(out / INDEX)
    return files


def write_tensor(f, spec: TensorSpec, item: tuple[str, np.ndarray] | None, block_bytes: int = 64 << 20) -> None:
    """Writes one tensor to ``f`` (anything with ``write``) in blocks of leading-axis rows,
    each made contiguous and cast to the planned dtype on its own, so a transposed view is
    never copied whole. ``item`` is the produced ``(name, array)``, checked against ``spec``."""
    if item is None:
        raise CheckpointError(f"tensor {spec.name!r} was planned but never produced")
    name, array = item
    dtype = np.dtype(spec.dtype)
    castable = array.dtype == dtype or (_is_float(array.dtype) and _is_float(dtype))
    if name != spec.name or tuple(array.shape) != tuple(spec.shape) or not castable:
        raise CheckpointError(
            f"tensor {name!r} {tuple(array.shape)} {array.dtype} does not match the planned "
            f"{spec.name!r} {tuple(spec.shape)} {dtype}"
        )
    rows = array.reshape(1, -1) if array.ndim < 2 else array
    step = max(1, block_bytes // max(1, rows[0].size * dtype.itemsize))
    for start in range(0, len(rows), step):
        block = np.ascontiguousarray(rows[start : start + step], dtype=dtype)
        f.write(block.reshape(-1).view(np.uint8).data)


def _is_float(dtype: np.dtype) -> bool:
    return dtype.kind == "f" or dtype == _BF16
