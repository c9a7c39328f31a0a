"""Loading an HF Qwen3 directory (config.json + safetensors) into the Bagpiper backbone.

Each parameter is assembled with ``jax.make_array_from_callback``: every device shard
reads just its slice of the memory-mapped safetensors, so no host ever holds more than
one shard of one tensor at a time, and a pod's hosts each read only their own shards.
The vocabulary is extended as in DESIGN §2.2: embedding and lm_head rows
``[text_offset, text_offset + V)`` are Qwen3's; every other row is N(0, init_std),
drawn per row from a seeded generator so the result does not depend on the mesh.
Parameters with no Qwen3 counterpart (stream embeddings, adaptor) keep their random
initialisation (stream embeddings start at zero).

The layout tables (:class:`Layout`, ``LAYER_PARAMS``, :func:`backbone_entries`) work both
ways and are shared with the reference PyTorch layout (``torch_layout``).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from bagpiper_jax.config import ConfigError, ModelConfig
from bagpiper_jax.convert.lazy_save import LazyArray
from bagpiper_jax.convert.tensor_reader import CheckpointError, TensorReader
from bagpiper_jax.model.bagpiper import Bagpiper
from bagpiper_jax.model.create import abstract_model
from bagpiper_jax.sharding import Rules, state_shardings
from bagpiper_jax.vocab import Vocab


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
        return tuple(int(np.prod(split[a:b])) for a, b in zip(bounds[:-1], bounds[1:]))

    def to_ours(self, tensor: np.ndarray, ours: tuple[int, ...], key: str, source: object) -> np.ndarray:
        """View of ``tensor`` (stored under ``key`` in ``source``) in our layout of shape ``ours``;
        ``CheckpointError`` naming the key when its shape does not fit."""
        expected = self.torch_shape(ours)
        if tuple(tensor.shape) != expected:
            raise CheckpointError(f"tensor {key!r} in {source} has shape {tuple(tensor.shape)}, which does not fit "
                                  f"the configured layout: expected {expected}")
        split = tensor.reshape(self.split_shape(ours))
        return split if self.perm is None else split.transpose(self.perm)

    def to_torch(self, array: np.ndarray) -> np.ndarray:
        """Our param (shape ``ours``) in the torch layout."""
        split = array if self.perm is None else array.transpose(np.argsort(self.perm))
        return split.reshape(self.torch_shape(array.shape))


# Our parameter path within the stacked decoder blocks -> layout of one layer's HF tensor;
# the HF key is ``model.layers.{i}.`` + ``Layout.key``.
LAYER_PARAMS: dict[str, Layout] = {
    "attn_norm.scale": Layout("input_layernorm.weight"),
    "mlp_norm.scale": Layout("post_attention_layernorm.weight"),
    "attn.q_proj": Layout("self_attn.q_proj.weight", (2, 0, 1), (2, 1)),
    "attn.k_proj": Layout("self_attn.k_proj.weight", (2, 0, 1), (2, 1)),
    "attn.v_proj": Layout("self_attn.v_proj.weight", (2, 0, 1), (2, 1)),
    "attn.o_proj": Layout("self_attn.o_proj.weight", (1, 2, 0), (1, 2)),
    "attn.q_norm.scale": Layout("self_attn.q_norm.weight"),
    "attn.k_norm.scale": Layout("self_attn.k_norm.weight"),
    "mlp.gate": Layout("mlp.gate_proj.weight", (1, 0)),
    "mlp.up": Layout("mlp.up_proj.weight", (1, 0)),
    "mlp.down": Layout("mlp.down_proj.weight", (1, 0)),
}
FINAL_NORM = Layout("model.norm.weight")


def layer_key(i: int, layout: Layout) -> str:
    return f"model.layers.{i}.{layout.key}"


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


def backbone_entries(cfg: ModelConfig) -> list[Entry]:
    """The decoder layers (layer by layer, param by param) and the final norm, HF-named."""
    entries = [Entry(layer_key(i, layout), "decoder.blocks." + path, layout, i)
               for path, layout in LAYER_PARAMS.items() for i in range(cfg.layers)]
    return entries + [Entry(FINAL_NORM.key, "final_norm.scale", FINAL_NORM)]


def read_hf_config(hf_dir: str | Path) -> dict:
    """The ``config.json`` of an HF Qwen3 directory; errors if it is not Qwen3."""
    path = Path(hf_dir) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path} not found: {hf_dir} is not an HF model directory")
    hf = json.loads(path.read_text())
    if hf.get("model_type") != "qwen3":
        raise CheckpointError(f"{path} has model_type {hf.get('model_type')!r}; expected 'qwen3' "
                              f"(architectures: {hf.get('architectures')})")
    return hf


def _rope_theta(hf: dict) -> float:
    if "rope_theta" in hf:
        return float(hf["rope_theta"])
    return float((hf.get("rope_parameters") or {}).get("rope_theta", 10_000.0))


def model_config_from_hf(hf: dict, base: ModelConfig = ModelConfig()) -> ModelConfig:
    """``base`` with the backbone dimensions of an HF Qwen3 config."""
    return dataclasses.replace(base, **_hf_dims(hf))


def _hf_dims(hf: dict) -> dict:
    heads = hf["num_attention_heads"]
    return {
        "text_vocab_size": hf["vocab_size"],
        "hidden": hf["hidden_size"],
        "layers": hf["num_hidden_layers"],
        "heads": heads,
        "kv_heads": hf.get("num_key_value_heads", heads),
        "head_dim": hf.get("head_dim") or hf["hidden_size"] // heads,
        "mlp": hf["intermediate_size"],
        "rms_eps": float(hf["rms_norm_eps"]),
        "rope_theta": _rope_theta(hf),
    }


def check_config_matches(cfg: ModelConfig, hf: dict, hf_dir: str | Path = "") -> None:
    """Raises ``ConfigError`` naming every model field that differs from the HF config."""
    wrong = [f"model.{k}={getattr(cfg, k)} but {hf_dir}/config.json gives {v}"
             for k, v in _hf_dims(hf).items() if getattr(cfg, k) != v]
    if wrong:
        raise ConfigError("config does not match the HF checkpoint: " + "; ".join(wrong))


def _extended_rows(vocab: Vocab, hf_rows: np.ndarray, std: float, seed: int, table: int,
                   index: tuple[slice, slice], transpose: bool) -> np.ndarray:
    """A slice of an extended ``[vocab, hidden]`` table (of its transpose if ``transpose``)."""
    rows, cols = (index[1], index[0]) if transpose else index
    start, stop, _ = rows.indices(vocab.size)
    dim = hf_rows.shape[1]
    out = np.empty((stop - start, len(range(dim)[cols])), np.float32)
    lo = min(max(start, vocab.text_offset), stop)
    hi = max(min(stop, vocab.text_offset + vocab.text_size), lo)
    out[lo - start:hi - start] = hf_rows[lo - vocab.text_offset:hi - vocab.text_offset, cols]
    for r in [*range(start, lo), *range(hi, stop)]:  # seeded per (table, row): same on any mesh
        out[r - start] = np.random.default_rng([seed, table, r]).normal(0.0, std, dim)[cols]
    return out.T if transpose else out


def load_hf_qwen3(hf_dir: str | Path, cfg: ModelConfig, mesh: Mesh, rules: Rules, seed: int = 0,
                  progress: Callable[[int], None] = lambda n: None, lazy: bool = False):
    """Bagpiper params from an HF Qwen3 directory, sharded on ``mesh``.

    Returns ``(graphdef, state, shardings)`` like :func:`bagpiper_jax.model.init_model`;
    ``progress`` is called with the number of HF tensors read as they are read (with
    ``lazy``, as they are built). ``lazy``: the imported params are
    :class:`~bagpiper_jax.convert.lazy_save.LazyArray` s, each read when it is written
    (``lazy_save.save_pytree``), so converting never holds the whole model.
    """
    hf = read_hf_config(hf_dir)
    check_config_matches(cfg, hf, hf_dir)
    reader = TensorReader(hf_dir)
    vocab = Vocab.from_config(cfg)
    graphdef, abstract = abstract_model(cfg, rules)
    shardings = state_shardings(abstract, mesh, rules)
    params = read_entries(reader, backbone_entries(cfg), abstract, shardings, progress, lazy)
    table_shape = (cfg.text_vocab_size, cfg.hidden)
    embed_key = "model.embed_tokens.weight"
    reader.view(embed_key, table_shape)  # checks the shape now
    head_key = "lm_head.weight" if "lm_head.weight" in reader else None
    if head_key is None and not hf.get("tie_word_embeddings", False):
        raise CheckpointError(f"tensor 'lm_head.weight' missing from {hf_dir} (embeddings are not tied)")
    head_key = head_key or embed_key
    reader.view(head_key, table_shape)
    for table, (path, key) in enumerate((("embed", embed_key), ("lm_head", head_key))):
        # the table is mapped per shard read, so nothing stays mapped between params
        params[path] = sharded_array(
            abstract_at(abstract, path), abstract_at(shardings, path),
            lambda idx, key=key, table=table: _read_released(
                reader, lambda: _extended_rows(vocab, reader.view(key, table_shape), cfg.init_std, seed, table,
                                               idx, table == 1)),
            lazy, lambda: progress(1))
    state = fill_state(cfg, rules, mesh, shardings, params, seed)
    return graphdef, state, shardings


def _read_released(reader: TensorReader, read: Callable[[], np.ndarray]) -> np.ndarray:
    """``read()``, then the reader's mapped pages released (see ``TensorReader.release``)."""
    block = read()
    reader.release()
    return block


def sharded_array(abstract: jax.ShapeDtypeStruct, sharding, read: Callable[[tuple], np.ndarray],
                  lazy: bool = False, done: Callable[[], None] = lambda: None) -> jax.Array | LazyArray:
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


def read_entries(reader: TensorReader, entries: list[Entry], abstract: nnx.State, shardings: nnx.State,
                 progress: Callable[[int], None] = lambda n: None, lazy: bool = False) -> dict[str, jax.Array]:
    """Our params named by ``entries`` (dotted path -> sharded array) from the tensors of
    ``reader``; every tensor is checked (an error naming its key) before any is read.
    ``progress`` is called with the number of tensors of each param read. ``lazy``: the
    params are :class:`LazyArray` s, read block by block when ``lazy_save`` writes them.
    The reader's memory maps are released after each block read."""
    groups: dict[str, list[Entry]] = {}
    for e in entries:
        groups.setdefault(e.path, []).append(e)

    def views(path: str) -> list[np.ndarray]:
        shape = abstract_at(abstract, path).shape
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
    return {path: sharded_array(abstract_at(abstract, path), abstract_at(shardings, path), open_param(path), lazy,
                                lambda p=path: done(p))
            for path in groups}


def hf_config_dict(cfg: ModelConfig, dtype: str = "float32") -> dict:
    """An HF ``config.json`` (Qwen3ForCausalLM) for the backbone of ``cfg`` with the text
    vocabulary only; the inverse of :func:`model_config_from_hf`."""
    return {
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
        "vocab_size": cfg.text_vocab_size, "hidden_size": cfg.hidden, "num_hidden_layers": cfg.layers,
        "num_attention_heads": cfg.heads, "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.head_dim,
        "intermediate_size": cfg.mlp, "hidden_act": "silu", "rms_norm_eps": cfg.rms_eps,
        "rope_theta": cfg.rope_theta, "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "max_position_embeddings": cfg.max_frames, "attention_bias": False, "attention_dropout": 0.0,
        "tie_word_embeddings": False, "use_cache": True, "dtype": dtype,
    }


def fill_state(cfg: ModelConfig, rules: Rules, mesh: Mesh, shardings: nnx.State,
               loaded: dict[str, jax.Array], seed: int = 0) -> nnx.State:
    """The model state with ``loaded`` params (dotted path -> array) and the rest randomly
    initialised (only the rest is computed: XLA drops the unused random draws)."""
    flat_shardings = dict(nnx.to_flat_state(shardings))
    rest = [p for p in flat_shardings if ".".join(map(str, p)) not in loaded]

    def create_rest():
        flat = dict(nnx.to_flat_state(nnx.state(Bagpiper(cfg, rules, rngs=nnx.Rngs(seed)))))
        return [flat[p][...] for p in rest]

    values = []
    if rest:
        with jax.set_mesh(mesh):
            values = jax.jit(create_rest, out_shardings=[flat_shardings[p].get_raw_value() for p in rest])()
    state = nnx.state(nnx.eval_shape(lambda: Bagpiper(cfg, rules, rngs=nnx.Rngs(seed))))
    for path, var in nnx.to_flat_state(state):
        key = ".".join(map(str, path))
        var.set_value(loaded[key] if key in loaded else values[rest.index(path)])
    return state


def abstract_at(state: nnx.State, dotted: str):
    """The leaf at a dotted param path of an NNX state (a shape, sharding or array)."""
    node = state
    for part in dotted.split("."):
        node = node[part]
    return node.get_raw_value()
