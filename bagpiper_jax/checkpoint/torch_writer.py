"""Streaming torch ``.pt`` output (``torch.save``'s zip format) without torch and without
holding the state dict.

``torch.save`` pickles a dict of in-memory tensors. Here the shapes and dtypes of all
tensors are known up front (a plan of :class:`TensorSpec` s), so the pickle is written
first from the plan alone — the opcodes ``torch.save`` emits for a dict of tensors: per
tensor, ``torch._utils._rebuild_tensor_v2`` over a persistent ``('storage', <dtype>Storage,
key, 'cpu', numel)`` — and each tensor's bytes follow as a zip record of its own, written
block by block as the tensor is produced (``safetensors_writer.write_tensor``). Records are
stored uncompressed and start 64-byte aligned, as torch's own writer does, so
``torch.load(path, mmap=True, weights_only=True)`` maps them; only the pickle's globals
(rebuild function, storage classes, ``OrderedDict``) are referenced, all on torch's
weights-only allow list.

``wrap`` puts the state dict under one key, e.g. ``{"module": state_dict}`` (the DeepSpeed
container of ESPnet's released checkpoints).
"""

from __future__ import annotations

import pickle
import struct
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import ml_dtypes
import numpy as np

from bagpiper_jax.checkpoint.errors import CheckpointError
from bagpiper_jax.checkpoint.safetensors_writer import TensorSpec, write_tensor

ARCHIVE = "archive"  # the zip's top folder (torch reads whatever the first record's folder is)
ALIGNMENT = 64  # record data start offsets, as torch.save writes them
_STORAGE_CLASSES = {
    np.dtype(np.float64): "DoubleStorage",
    np.dtype(np.float32): "FloatStorage",
    np.dtype(np.float16): "HalfStorage",
    np.dtype(ml_dtypes.bfloat16): "BFloat16Storage",
    np.dtype(np.int64): "LongStorage",
    np.dtype(np.int32): "IntStorage",
    np.dtype(np.int16): "ShortStorage",
    np.dtype(np.int8): "CharStorage",
    np.dtype(np.uint8): "ByteStorage",
    np.dtype(np.bool_): "BoolStorage",
}
_PADDING_FIELD = 0x4246  # zip extra-field id of the alignment padding (torch's writer uses the same)


def write_torch_file(
    out: str | Path,
    specs: list[TensorSpec],
    tensors: Iterable[tuple[str, np.ndarray]],
    wrap: str | None = None,
    progress: Callable[[int], None] = lambda nbytes: None,
) -> Path:
    """Writes the tensors of ``specs`` (in that order, as ``tensors`` yields them) as a torch
    state dict file; ``wrap`` nests it under that key. Returns ``out``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise CheckpointError(f"tensor names repeat in the plan for {out}")
    source: Iterator = iter(tensors)
    with open(out, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
        _small_record(zf, f, "data.pkl", state_dict_pickle(specs, wrap))
        _small_record(zf, f, ".format_version", b"1")
        _small_record(zf, f, ".storage_alignment", str(ALIGNMENT).encode())
        _small_record(zf, f, "byteorder", b"little")
        for key, spec in enumerate(specs):
            with _record(zf, f, f"data/{key}", spec.nbytes) as record:
                write_tensor(record, spec, next(source, None))
            progress(spec.nbytes)
        _small_record(zf, f, "version", b"3\n")
    if next(source, None) is not None:
        raise CheckpointError(f"more tensors were produced than planned for {out}")
    return out


def state_dict_pickle(specs: list[TensorSpec], wrap: str | None = None) -> bytes:
    """The ``data.pkl`` of a state dict holding ``specs`` (tensor ``i`` in storage ``"i"``)."""
    body = pickle.EMPTY_DICT + pickle.MARK
    for key, spec in enumerate(specs):
        body += _string(spec.name) + _tensor(spec, str(key))
    body += pickle.SETITEMS
    if wrap is not None:
        body = pickle.EMPTY_DICT + _string(wrap) + body + pickle.SETITEM
    return pickle.PROTO + bytes([2]) + body + pickle.STOP


def _tensor(spec: TensorSpec, key: str) -> bytes:
    """``_rebuild_tensor_v2(storage, 0, shape, contiguous strides, False, OrderedDict())``."""
    dtype = np.dtype(spec.dtype)
    if dtype not in _STORAGE_CLASSES:
        raise CheckpointError(f"tensor {spec.name!r}: dtype {dtype} has no torch storage type")
    numel = int(np.prod(spec.shape, dtype=np.int64))
    strides = [int(np.prod(spec.shape[i + 1 :], dtype=np.int64)) for i in range(len(spec.shape))]
    storage = (
        pickle.MARK
        + _string("storage")
        + _global("torch", _STORAGE_CLASSES[dtype])
        + _string(key)
        + _string("cpu")
        + _int(numel)
        + pickle.TUPLE
        + pickle.BINPERSID
    )
    args = (
        storage
        + _int(0)
        + _tuple(spec.shape)
        + _tuple(strides)
        + pickle.NEWFALSE
        + _global("collections", "OrderedDict")
        + pickle.EMPTY_TUPLE
        + pickle.REDUCE
    )
    return _global("torch._utils", "_rebuild_tensor_v2") + pickle.MARK + args + pickle.TUPLE + pickle.REDUCE


def _global(module: str, name: str) -> bytes:
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def _string(text: str) -> bytes:
    raw = text.encode()
    return pickle.BINUNICODE + struct.pack("<I", len(raw)) + raw


def _int(n: int) -> bytes:
    if 0 <= n < 256:
        return pickle.BININT1 + bytes([n])
    if -(2**31) <= n < 2**31:
        return pickle.BININT + struct.pack("<i", n)
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return pickle.LONG1 + bytes([len(raw)]) + raw


def _tuple(values) -> bytes:
    return pickle.MARK + b"".join(_int(int(v)) for v in values) + pickle.TUPLE


def _record(zf: zipfile.ZipFile, f, name: str, nbytes: int):
    """An open zip record whose data starts ``ALIGNMENT``-aligned in the file ``f``."""
    name = f"{ARCHIVE}/{name}"
    zip64 = nbytes * 1.05 > zipfile.ZIP64_LIMIT  # zipfile's rule for a record of known size
    header = 30 + len(name.encode()) + 4 + (20 if zip64 else 0)  # + the padding field's bytes
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    info.file_size = nbytes
    padding = -(f.tell() + header) % ALIGNMENT
    info.extra = struct.pack("<HH", _PADDING_FIELD, padding) + b"Z" * padding
    handle = zf.open(info, "w", force_zip64=zip64)
    if f.tell() % ALIGNMENT:
        raise CheckpointError(f"internal: zip record {name} of {f.name} is not {ALIGNMENT}-byte aligned")
    return handle


def _small_record(zf: zipfile.ZipFile, f, name: str, data: bytes) -> None:
    with _record(zf, f, name, len(data)) as record:
        record.write(data)
