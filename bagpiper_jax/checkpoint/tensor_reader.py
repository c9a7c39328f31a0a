"""Lazy, streaming access to the tensors of a HuggingFace / PyTorch weights directory.

Supports a single ``model.safetensors``, sharded safetensors with
``model.safetensors.index.json``, any other ``*.safetensors`` files, and ``*.bin`` /
``*.pt`` files loaded with ``torch.load(weights_only=True)`` (never arbitrary pickles: a
pickle that would run code is refused before anything in it runs) holding a state dict or
DeepSpeed's ``{"module": state_dict}`` (ESPnet's released checkpoints; other top-level
entries of a DeepSpeed file are ignored).
Safetensors files are parsed directly (header + memory map, no torch needed) and read one
tensor at a time, so a checkpoint never has to fit in host RAM. Torch files in the zip
format (``torch.save``'s default since 1.6) are loaded with ``mmap=True``, so their tensors
are memory maps too; only legacy (non-zip) torch files are read whole.

Pages read through a memory map count towards the process's RSS until they are unmapped
or dropped, so callers reading a whole checkpoint call :meth:`TensorReader.release` after
each block they read: safetensors maps are per view and go with it; for torch files,
``release`` drops (``madvise(MADV_DONTNEED)``) the pages of the tensors read since the last
call — they are clean pages of a private file map, so a later read faults them in again
from the page cache.
"""

from __future__ import annotations

import ctypes
import functools
import json
import mmap
import struct
import sys
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np

from bagpiper_jax.checkpoint.errors import CheckpointError

DEEPSPEED_KEY = "module"  # DeepSpeed's model-states container: {"module": state_dict, ...}


class TensorReader:
    """Maps tensor names to files and reads tensors as numpy arrays on demand.

    Args:
      path: a directory of weight files, or one weight file.
      strip_prefixes: prefixes removed from stored names (first match wins), so
        ``thinker.audio_tower.conv2d1.weight`` can be read as ``conv2d1.weight``.
      only_prefixes: when given, names not starting with one of these are ignored
        (before stripping), so unrelated weights are never indexed or read.
    """

    def __init__(
        self, path: str | Path, strip_prefixes: tuple[str, ...] = (), only_prefixes: tuple[str, ...] | None = None
    ):
        self.path = Path(path)
        self._strip = strip_prefixes
        self._only = only_prefixes
        self._where: dict[str, tuple[Path, str]] = {}  # name -> (file, stored name)
        self._torch_cache: dict[Path, dict] = {}
        self._torch_mmap: set[Path] = set()  # files in _torch_cache that are memory maps
        self._touched: dict[int, object] = {}  # id -> memory-mapped torch tensor read since release()
        self._headers: dict[Path, tuple[dict, int]] = {}
        files = self._weight_files()
        for f in files:
            for stored in self._names_in(f):
                if self._only is not None and not stored.startswith(self._only):
                    continue
                self._where.setdefault(self._rename(stored), (f, stored))
        if not self._where:
            raise CheckpointError(
                f"no tensors found in {self.path}" + (f" under prefixes {self._only}" if self._only else "")
            )

    def _weight_files(self) -> list[Path]:
        if self.path.is_file():
            return [self.path]
        if not self.path.is_dir():
            raise CheckpointError(f"weights path {self.path} does not exist")
        index = self.path / "model.safetensors.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise CheckpointError(f"{index} is not a valid safetensors index: {e}") from e
            files = sorted({self.path / name for name in weight_map.values()})
            missing = [str(f) for f in files if not f.is_file()]
            if missing:
                raise CheckpointError(f"{index} names missing shard files: {missing}")
            return files
        files = sorted(self.path.glob("*.safetensors"))
        if not files:
            files = sorted(list(self.path.glob("*.bin")) + list(self.path.glob("*.pt")))
        if not files:
            raise CheckpointError(f"no *.safetensors, *.bin or *.pt weight files in {self.path}")
        return files

    def _names_in(self, f: Path) -> list[str]:
        if f.suffix == ".safetensors":
            self._headers[f] = _safetensors_header(f)
            return list(self._headers[f][0])
        return list(self._torch_state(f).keys())

    def _torch_state(self, f: Path) -> dict:
        if f not in self._torch_cache:
            mmap = zipfile.is_zipfile(f)  # legacy (pre-1.6) torch files cannot be memory-mapped
            try:
                state = _torch().load(str(f), map_location="cpu", weights_only=True, mmap=mmap)
            except Exception as e:  # torch raises several types for bad/unsafe pickles
                raise CheckpointError(
                    f"cannot load {f} as a weights-only torch file (nothing in it was run): {_reason(e)}"
                ) from e
            if not isinstance(state, dict):
                raise CheckpointError(f"{f} does not hold a state dict (got {type(state).__name__})")
            if isinstance(state.get(DEEPSPEED_KEY), dict):  # DeepSpeed's {"module": state dict}
                state = state[DEEPSPEED_KEY]
            torch = _torch()
            other = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
            if other:
                raise CheckpointError(f"{f} holds entries that are not tensors: {other[:5]}")
            self._torch_cache[f] = state
            if mmap:
                self._torch_mmap.add(f)
        return self._torch_cache[f]

    def release(self) -> None:
        """Drops the pages read from memory-mapped torch files since the last call, so they
        stop counting as this process's memory (they are read again from the page cache if
        needed). Safetensors maps need nothing: each view owns its own."""
        for tensor in self._touched.values():
            _drop_pages(tensor.data_ptr(), tensor.numel() * tensor.element_size())
        self._touched.clear()

    def _rename(self, stored: str) -> str:
        for p in self._strip:
            if stored.startswith(p):
                return stored[len(p) :]
        return stored

    def keys(self) -> list[str]:
        return sorted(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def view(self, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """The stored tensor without copying where possible (a memory map for safetensors,
        in its stored dtype, bf16 as ``ml_dtypes.bfloat16``); index it, then copy."""
        if name not in self._where:
            raise CheckpointError(f"tensor {name!r} missing from {self.path}")
        f, stored = self._where[name]
        if f.suffix == ".safetensors":
            array = _map_safetensor(f, stored, *self._headers[f])
        else:
            tensor = self._torch_state(f)[stored]
            if f in self._torch_mmap:
                self._touched[id(tensor)] = tensor
            array = _torch_to_numpy(tensor)
        if shape is not None and tuple(array.shape) != tuple(shape):
            raise CheckpointError(
                f"tensor {name!r} in {self.path} has shape {tuple(array.shape)}, expected {tuple(shape)}"
            )
        return array

    def get(self, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """Reads one tensor into memory (bf16/f16 widened to float32); checks ``shape``."""
        return widen(self.view(name, shape))


def widen(array: np.ndarray) -> np.ndarray:
    """An in-memory copy; half-precision floats become float32."""
    if array.dtype in (np.dtype(ml_dtypes.bfloat16), np.dtype(np.float16)):
        return array.astype(np.float32)
    return np.array(array)


SAFETENSORS_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


def _safetensors_header(f: Path) -> tuple[dict, int]:
    """(tensor entries, byte offset of the data section) of a safetensors file, each entry
    checked: a known dtype, a shape whose bytes equal its offsets' span, inside the file."""
    try:
        size = f.stat().st_size
        with open(f, "rb") as h:
            (n,) = struct.unpack("<Q", h.read(8))
            if n > size - 8:
                raise CheckpointError(f"{f}: header length {n} runs past the end of the {size}-byte file")
            header = json.loads(h.read(n))
    except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{f} is not a readable safetensors file: {e}") from e
    if not isinstance(header, dict):
        raise CheckpointError(f"{f}: the header is not a JSON object")
    header.pop("__metadata__", None)
    data_size = size - 8 - n
    for name, entry in header.items():
        _check_entry(f, name, entry, data_size)
    return header, 8 + n


def _check_entry(f: Path, name: str, entry, data_size: int) -> None:
    """Raises :class:`CheckpointError` naming the tensor when its header entry is unusable."""
    try:
        dtype, shape, (start, end) = entry["dtype"], list(entry["shape"]), entry["data_offsets"]
        ok = all(isinstance(d, int) and d >= 0 for d in [*shape, start, end])
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise CheckpointError(f"{f}: tensor {name!r} has a malformed header entry {entry!r}")
    if dtype not in SAFETENSORS_DTYPES:
        raise CheckpointError(f"{f}: tensor {name!r} has unsupported dtype {dtype}")
    if not start <= end <= data_size:
        raise CheckpointError(
            f"{f}: tensor {name!r} has data offsets [{start}, {end}) outside the {data_size}-byte data section"
        )
    expected = np.dtype(SAFETENSORS_DTYPES[dtype]).itemsize * int(np.prod(shape, dtype=np.int64))
    if end - start != expected:
        raise CheckpointError(
            f"{f}: tensor {name!r} of shape {tuple(shape)} {dtype} needs {expected} bytes, "
            f"its offsets span {end - start}"
        )


def _map_safetensor(f: Path, name: str, header: dict, data_start: int) -> np.ndarray:
    """One tensor as a read-only memory map."""
    entry = header[name]  # checked by _safetensors_header
    dtype = np.dtype(SAFETENSORS_DTYPES[entry["dtype"]])
    start, end = entry["data_offsets"]
    if end == start:
        return np.zeros(entry["shape"], dtype)
    return np.memmap(
        f, dtype=dtype, mode="r", offset=data_start + start, shape=(end - start) // dtype.itemsize
    ).reshape(entry["shape"])


_MADV_DONTNEED = 4  # Linux


def _drop_pages(address: int, nbytes: int) -> None:
    """``madvise(MADV_DONTNEED)`` over the pages holding ``[address, address + nbytes)`` of a
    private, never-written file map (neighbouring bytes on the edge pages are re-read too).
    Best effort: does nothing where ``madvise`` is unavailable."""
    if nbytes <= 0 or _libc() is None:
        return
    page = mmap.PAGESIZE
    start = address // page * page
    end = -(-(address + nbytes) // page) * page
    _libc().madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_DONTNEED)


@functools.cache
def _libc():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        return libc if sys.platform.startswith("linux") else None
    except (OSError, AttributeError):
        return None


def _reason(error: Exception) -> str:
    """One line of torch's (multi-line) load error: the line naming what was refused
    (e.g. a global a weights-only load does not allow), else the first."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    return next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), lines[0])


def _torch():
    import torch  # optional dependency (the `convert` extra), needed only for .pt/.bin files

    return torch


def _torch_to_numpy(t) -> np.ndarray:
    torch = _torch()
    if t.dtype == torch.bfloat16:
        return t.detach().cpu().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.detach().cpu().numpy()
