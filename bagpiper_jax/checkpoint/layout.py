"""Tensor layouts: how each of our params maps to PyTorch tensors, and reading params
from tensors shard by shard.

A param is assembled with ``jax.make_array_from_callback``: every device shard reads just
its slice of the memory-mapped source tensors, so no host ever holds more than one shard
of one tensor at a time, and a pod's hosts each read only their own shards. With ``lazy``
the params are :class:`~bagpiper_jax.checkpoint.lazy_save.LazyArray` s, each read block by
block only when ``lazy_save`` writes it (conversion never holds the whole model).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from bagpiper_jax.checkpoint.errors import CheckpointError
from bagpiper_jax.checkpoint.lazy_save import LazyArray
from bagpiper_jax.checkpoint.tensor_reader import TensorReader
from bagpiper_jax.config import ModelConfig, RuntimeConfig
from bagpiper_jax.model.bagpiper import Bagpiper
from bagpiper_jax.sharding import Rules


@dataclasses.dataclass(frozen=True)
class Layout:
    """How one of our params relates to its PyTorch tensor ``key``, both ways.

    ``ours = torch.reshape(split).transpose(perm)``, where ``split`` is our shape in the
    torch axis order; the torch shape merges consecutive ``groups`` of ``split``'s axes
    (e.g. ``q_proj.weight [heads*head_dim, hidden]`` -> ours ``[hidden, heads, head_dim]``:
    perm (2, 0, 1), groups (2, 1)). Both directions only reshape/transpose, so they are
    views of memory maps (reading a slice reads just its bytes) and bit-exact.
    """

    key: str
    perm: tuple[int, ...] | None = None  # None: same axis order
    groups: tuple[int, ...] | None = None  # None: one torch axis per split axis

    def split_shape(self, ours: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(ours) if self.perm is None else tuple(ours[i] for i in np.argsort(self.perm))

    def torch_shape(self, ours: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of the torch tensor holding our param of shape ``ours``."""
        split = self.split_shape(ours)
        groups = self.groups or (1,) * len(split)
        bounds = np.cumsum((0,) + groups)
        return tuple(int(np.prod(split[a:b])) for a, b in itertools.pairwise(bounds))

    def to_ours(self, tensor: np.ndarray, ours: tuple[int, ...], key: str, source: object) -> np.ndarray:
        """View of ``tensor`` (stored under ``key`` in ``source``) in our layout of shape ``ours``;
        ``CheckpointError`` naming the key when its shape does not fit."""
        expected = self.torch_shape(ours)
        if tuple(tensor.shape) != expected:
            raise CheckpointError(
                f"tensor {key!r} in {source} has shape {tuple(tensor.shape)}, which does not fit "
                f"the configured layout: expected {expected}"
            )
        split = tensor.reshape(self.split_shape(ours))
        return split if self.perm is None else split.transpose(self.perm)

    def to_torch(self, array: np.ndarray) -> np.ndarray:
        """Our param (shape ``ours``) in the torch layout."""
        split = array if self.perm is None else array.transpose(np.argsort(self.perm))
        return split.reshape(self.torch_shape(array.shape))


@dataclasses.dataclass(frozen=True)
class Entry:
    """One PyTorch tensor ``key`` <-> one of our params (``path``, dotted) or one layer of it."""

    key: str
    path: str
    layout: Layout
    layer: int | None = None  # index on the leading layers axis of a stacked param
    rows: slice | None = None  # torch rows kept (the text rows of a plain HF export)

    def torch_shape(self, leaf_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of the torch tensor, given our param's (whole, stacked) shape."""
        shape = self.layout.torch_shape(leaf_shape[1:] if self.layer is not None else leaf_shape)
        return shape if self.rows is None else (len(range(shape[0])[self.rows]),) + shape[1:]

    def to_torch(self, leaf: np.ndarray) -> np.ndarray:
        """The torch tensor (a view where possible) from our whole param ``leaf``."""
        tensor = self.layout.to_torch(leaf if self.layer is None else leaf[self.layer])
        return tensor if self.rows is None else tensor[self.rows]


def sharded_array(
    abstract: jax.ShapeDtypeStruct,
    sharding,
    read: Callable[[tuple], np.ndarray],
    lazy: bool = False,
    done: Callable[[], None] = lambda: None,
) -> jax.Array | LazyArray:
    """A global array of ``abstract``'s shape and dtype whose device shards each come from
    ``read(index)`` (only that slice is read: one shard of one tensor in host memory at a time).
    ``read`` returns a fresh array (never a view of a memory map, which jax might alias).
    ``lazy``: a :class:`LazyArray` reading its blocks with ``read`` when it is written.
    ``done`` runs once the array is built (or written)."""
    dtype = np.dtype(abstract.dtype)
    if lazy:
        return LazyArray(abstract.shape, dtype, sharding, lambda: read, done)
    array = jax.make_array_from_callback(abstract.shape, sharding, lambda idx: np.asarray(read(idx), dtype))
    done()
    return array


def stacked_reader(views: list[np.ndarray]) -> Callable[[tuple], np.ndarray]:
    """``read(index)`` of a ``[layers, ...]`` param from one (lazy) per-layer view each."""
    return lambda idx: np.stack([views[i][idx[1:]] for i in range(len(views))[idx[0]]])


def read_entries(
    reader: TensorReader,
    entries: list[Entry],
    abstract: nnx.State,
    shardings: nnx.State,
    progress: Callable[[int], None] = lambda n: None,
    lazy: bool = False,
) -> dict[str, jax.Array]:
    """Our params named by ``entries`` (dotted path -> sharded array) from the tensors of
    ``reader``; every tensor is checked (an error naming its key) before any is read.
    ``progress`` is called with the number of tensors of each param read. ``lazy``: the
    params are :class:`LazyArray` s, read block by block when ``lazy_save`` writes them.
    The reader's memory maps are released after each block read."""
    groups: dict[str, list[Entry]] = {}
    for e in entries:
        groups.setdefault(e.path, []).append(e)

    def views(path: str) -> list[np.ndarray]:
        shape = leaf_at(abstract, path).shape
        ours = shape[1:] if groups[path][0].layer is not None else shape
        return [e.layout.to_ours(reader.view(e.key), ours, e.key, reader.path) for e in groups[path]]

    for path in groups:
        views(path)  # checks shapes; maps nothing for long
    reader.release()

    def open_param(path: str) -> Callable[[tuple], np.ndarray]:
        # Maps the tensors per block read, and releases them after it: pages read through a
        # map count as this process's memory until they are unmapped or dropped.
        def read(idx: tuple) -> np.ndarray:
            tensors = views(path)
            block = stacked_reader(tensors)(idx) if groups[path][0].layer is not None else np.array(tensors[0][idx])
            del tensors
            reader.release()
            return block

        return read

    def done(path: str) -> None:
        progress(len(groups[path]))

    return {
        path: sharded_array(
            leaf_at(abstract, path), leaf_at(shardings, path), open_param(path), lazy, lambda p=path: done(p)
        )
        for path in groups
    }


def fill_state(
    cfg: ModelConfig,
    runtime: RuntimeConfig,
    rules: Rules,
    mesh: Mesh,
    shardings: nnx.State,
    loaded: dict[str, jax.Array],
    seed: int = 0,
) -> nnx.State:
    """The model state with ``loaded`` params (dotted path -> array) and the rest randomly
    initialised (only the rest is computed: XLA drops the unused random draws)."""
    flat_shardings = dict(nnx.to_flat_state(shardings))
    rest = [p for p in flat_shardings if ".".join(map(str, p)) not in loaded]

    def create_rest():
        flat = dict(nnx.to_flat_state(nnx.state(Bagpiper(cfg, runtime, rules, rngs=nnx.Rngs(seed)))))
        return [flat[p][...] for p in rest]

    values = []
    if rest:
        with jax.set_mesh(mesh):
            values = jax.jit(create_rest, out_shardings=[flat_shardings[p].get_raw_value() for p in rest])()
    state = nnx.state(nnx.eval_shape(lambda: Bagpiper(cfg, runtime, rules, rngs=nnx.Rngs(seed))))
    for path, var in nnx.to_flat_state(state):
        key = ".".join(map(str, path))
        var.set_value(loaded[key] if key in loaded else values[rest.index(path)])
    return state


def leaf_at(state: nnx.State, dotted: str):
    """The leaf at a dotted param path of an NNX state (a shape, sharding or array)."""
    node = state
    for part in dotted.split("."):
        node = node[part]
    return node.get_raw_value()
