"""Saving a params tree to Orbax one chunk at a time, reading each chunk only when it is written.

Orbax saves a whole pytree of existing ``jax.Array`` s: converting with it directly means
holding the whole model in memory, and Orbax's host copies, compression and OCDBT write
buffers of a whole param on top (the largest param, the embedding table, several times
over). Here the leaves may instead be :class:`LazyArray` s — shape, dtype, sharding and a
function reading any block of the param on the host — written by
:class:`_LazyArrayHandler` straight into the TensorStore array Orbax's ``ArrayHandler``
would create, chunk by chunk (chunks of at most :data:`CHUNK_BYTES`), a couple of chunks in
flight. No ``jax.Array`` is built; the memory in use is a few chunks.

The checkpoint is what ``StandardSave`` of the built tree writes (``jax.Array`` leaves,
the same TensorStore specs, ``_METADATA``, ``_sharding`` and array-metadata files; only
params above ``CHUNK_BYTES`` are stored in several chunks, which any restore reads), so it
restores through the normal path (``StandardRestore`` onto any mesh, partial restore,
metadata). Uses Orbax internals (``tensorstore_utils.build_array_write_spec``, the
sharding-file writer) through :mod:`bagpiper_jax.compat`;
``test_lazy_save_writes_what_standard_save_writes`` checks the files against StandardSave.
With several JAX processes each param is built as a ``jax.Array`` and saved by
``ArrayHandler`` itself, one at a time. Where the internals are not available (an
untested Orbax series) every param is built whole and saved with ``StandardSave``: the
same files, with the whole model in memory.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts
from orbax.checkpoint import type_handlers

from bagpiper_jax.checkpoint import integrity
from bagpiper_jax.compat import ORBAX_WRITER

CHUNK_BYTES = 64 * 2**20  # largest stored chunk of a param (Orbax's SaveArgs.chunk_byte_size)
IN_FLIGHT = 2  # chunks being compressed/written while the next is read


class LazyArray:
    """A param not read yet.

    Args:
      shape, dtype, sharding: of the ``jax.Array`` it stands for.
      open: returns ``read(index) -> np.ndarray``, the block at a tuple of slices (a fresh
        array of ``dtype``); called once per save, so it may map files for the duration.
      done: called when the param has been written (e.g. to unmap its source, count it).
    """

    def __init__(
        self,
        shape: tuple[int, ...],
        dtype,
        sharding: jax.sharding.Sharding,
        open: Callable[[], Callable[[tuple], np.ndarray]],
        done: Callable[[], None] = lambda: None,
    ):
        self.shape, self.dtype, self.sharding = tuple(shape), np.dtype(dtype), sharding
        self._open, self._done = open, done

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def read_blocks(self, chunk_shape: Sequence[int]):
        """Yields ``(index, block)`` covering the array, one chunk of ``chunk_shape`` at a time."""
        read = self._open()
        starts = itertools.product(*(range(0, n, c) for n, c in zip(self.shape, chunk_shape)))
        for start in starts:
            index = tuple(slice(s, min(s + c, n)) for s, c, n in zip(start, chunk_shape, self.shape))
            yield index, self._checked(read(index), index)

    def make(self) -> jax.Array:
        """The whole ``jax.Array`` (each device shard read by itself)."""
        read = self._open()
        array = jax.make_array_from_callback(self.shape, self.sharding, lambda index: self._checked(read(index), index))
        self._done()
        return array

    def done(self) -> None:
        self._done()

    def _checked(self, block: np.ndarray, index: tuple) -> np.ndarray:
        block = np.asarray(block, self.dtype)
        expected = tuple(len(range(n)[i]) for n, i in zip(self.shape, index))
        if block.shape != expected:
            raise ValueError(f"LazyArray{self.shape} read {block.shape} at {index}, expected {expected}")
        return block

    def __repr__(self) -> str:
        return f"LazyArray({self.shape}, {self.dtype})"


class _LazyArrayHandler(type_handlers.ArrayHandler):
    """Writes :class:`LazyArray` leaves as ``ArrayHandler`` writes ``jax.Array`` s (same
    typestr, specs and metadata files), one param at a time, chunk by chunk."""

    async def serialize(self, values: Sequence[LazyArray], infos: Sequence[Any], args: Sequence[Any] | None = None):
        args = args or [ocp.SaveArgs()] * len(values)
        if jax.process_count() > 1:  # each process writes its own shards: let ArrayHandler do it
            for value, info, arg in zip(values, infos, args):
                array = value.make()
                for f in await super().serialize([array], [info], [arg]):
                    f.result()  # written before the next param is built
                del array
            return []
        metadatas = []
        for value, info, arg in zip(values, infos, args):
            await info.await_path_creation()
            spec = ORBAX_WRITER.build_array_write_spec(
                info,
                arg,
                global_shape=value.shape,
                local_shape=value.sharding.shard_shape(value.shape),
                dtype=value.dtype,
                use_ocdbt=info.is_ocdbt_checkpoint,
                process_index=ORBAX_WRITER.subdir_process_index(info.is_ocdbt_checkpoint),
                metadata_key=self._metadata_key,
            )
            store = await ts.open(ts.Spec(spec.json), create=True, open=True, context=info.ts_context)
            pending = []
            for index, block in value.read_blocks(store.chunk_layout.write_chunk.shape):
                pending.append(store[index].write(block, can_reference_source_data_indefinitely=True))
                if len(pending) >= IN_FLIGHT:
                    await pending.pop(0)
            for write in pending:
                await write
            del store, pending
            value.done()
            metadatas.append(spec.metadata)
        if self._array_metadata_store is not None:
            await self._array_metadata_store.write(
                checkpoint_dir=infos[0].parent_dir,
                array_metadatas=metadatas,
                process_index=ORBAX_WRITER.process_index(),
            )
        if self._enable_write_sharding_file:
            await ORBAX_WRITER.serialize_shardings([v.sharding for v in values], infos, primary_host=self._primary_host)
        return []


def save_pytree(directory: str | Path, tree: Any) -> None:
    """Writes ``tree`` (leaves: ``jax.Array`` / :class:`LazyArray`) as ``StandardSave`` would,
    reading and writing :class:`LazyArray` s a chunk at a time, then its checksums."""
    directory = Path(directory).absolute()
    if ORBAX_WRITER is None:  # the public path: each param built whole
        tree = jax.tree.map(lambda leaf: leaf.make() if isinstance(leaf, LazyArray) else leaf, tree)
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(directory, tree, force=True)
    else:
        _save_chunked(directory, tree)
    if jax.process_index() == 0:
        integrity.seal(directory)


def _save_chunked(directory: Path, tree: Any) -> None:
    sizes = [leaf.nbytes for leaf in jax.tree.leaves(tree)]
    lazy = (LazyArray, _LazyArrayHandler(array_metadata_store=ORBAX_WRITER.array_metadata_store()))
    registry = ORBAX_WRITER.create_registry(*ORBAX_WRITER.default_handlers, lazy)
    # A bounded write limit also keeps Orbax from staging a jax.Array leaf's whole OCDBT write
    # in one in-memory transaction (it uses one only when writes are unlimited).
    handler = ocp.PyTreeCheckpointHandler(
        save_concurrent_gb=max(1, math.ceil(max(sizes, default=1) / 1e9)), type_handler_registry=registry
    )
    save_args = jax.tree.map(lambda _: ocp.SaveArgs(chunk_byte_size=CHUNK_BYTES), tree)
    with ocp.Checkpointer(handler) as ckptr:
        ckptr.save(directory, args=ocp.args.PyTreeSave(tree, save_args=save_args), force=True)
