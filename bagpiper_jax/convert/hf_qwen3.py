"""Loading an HF Qwen3 directory (config.json + safetensors) into the Bagpiper backbone.

Each parameter is assembled with ``jax.make_array_from_callback``: every device shard
reads just its slice of the memory-mapped safetensors, so no host ever holds more than
one shard of one tensor at a time, and a pod's hosts each read only their own shards.
The vocabulary is extended as in DESIGN §2.2: embedding and lm_head rows
``[text_offset, text_offset + V)`` are Qwen3's; every other row is N(0, init_std),
drawn per row from a seeded generator so the result does not depend on the mesh.
Parameters with no Qwen3 counterpart (stream embeddings, adaptor) keep their random
initialisation (stream embeddings start at zero).
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
from bagpiper_jax.convert.tensor_reader import CheckpointError, TensorReader, widen
from bagpiper_jax.model.bagpiper import Bagpiper
from bagpiper_jax.model.create import abstract_model
from bagpiper_jax.sharding import Rules, state_shardings
from bagpiper_jax.vocab import Vocab

# Our parameter path (within the stacked decoder blocks) -> (HF key suffix, view in our layout).
# Views only reshape/transpose the memory map, so slicing them reads just the needed bytes.
LAYER_PARAMS: dict[str, tuple[str, Callable]] = {
    "attn_norm.scale": ("input_layernorm.weight", lambda w, c: w),
    "mlp_norm.scale": ("post_attention_layernorm.weight", lambda w, c: w),
    "attn.q_proj": ("self_attn.q_proj.weight",
                    lambda w, c: w.reshape(c.heads, c.head_dim, c.hidden).transpose(2, 0, 1)),
    "attn.k_proj": ("self_attn.k_proj.weight",
                    lambda w, c: w.reshape(c.kv_heads, c.head_dim, c.hidden).transpose(2, 0, 1)),
    "attn.v_proj": ("self_attn.v_proj.weight",
                    lambda w, c: w.reshape(c.kv_heads, c.head_dim, c.hidden).transpose(2, 0, 1)),
    "attn.o_proj": ("self_attn.o_proj.weight",
                    lambda w, c: w.reshape(c.hidden, c.heads, c.head_dim).transpose(1, 2, 0)),
    "attn.q_norm.scale": ("self_attn.q_norm.weight", lambda w, c: w),
    "attn.k_norm.scale": ("self_attn.k_norm.weight", lambda w, c: w),
    "mlp.gate": ("mlp.gate_proj.weight", lambda w, c: w.T),
    "mlp.up": ("mlp.up_proj.weight", lambda w, c: w.T),
    "mlp.down": ("mlp.down_proj.weight", lambda w, c: w.T),
}


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


def load_hf_qwen3(hf_dir: str | Path, cfg: ModelConfig, mesh: Mesh, rules: Rules, seed: int = 0):
    """Bagpiper params from an HF Qwen3 directory, sharded on ``mesh``.

    Returns ``(graphdef, state, shardings)`` like :func:`bagpiper_jax.model.init_model`.
    """
    hf = read_hf_config(hf_dir)
    check_config_matches(cfg, hf, hf_dir)
    reader = TensorReader(hf_dir)
    vocab = Vocab.from_config(cfg)
    graphdef, abstract = abstract_model(cfg, rules)
    shardings = state_shardings(abstract, mesh, rules)
    dtype = np.dtype(cfg.param_dtype)

    def build(shape, sharding, read):
        return jax.make_array_from_callback(shape, sharding, lambda idx: np.asarray(read(idx), dtype))

    def stacked(path, suffix, view):
        shape = (cfg.layers,) + tuple(_abstract_at(abstract, path).shape[1:])
        keys = [f"model.layers.{i}.{suffix}" for i in range(cfg.layers)]
        for k in keys:  # fail early, naming the key
            _layout_view(reader, k, view, cfg, shape[1:])

        def read(idx):
            return np.stack([widen(_layout_view(reader, keys[i], view, cfg, shape[1:])[idx[1:]])
                             for i in range(cfg.layers)[idx[0]]])
        return build(shape, _sharding_at(shardings, path), read)

    params = {}
    for path, (suffix, view) in LAYER_PARAMS.items():
        params["decoder.blocks." + path] = stacked("decoder.blocks." + path, suffix, view)
    params["final_norm.scale"] = build((cfg.hidden,), _sharding_at(shardings, "final_norm.scale"),
                                       lambda idx: reader.get("model.norm.weight", (cfg.hidden,))[idx])
    embed = reader.view("model.embed_tokens.weight", (cfg.text_vocab_size, cfg.hidden))
    head_key = "lm_head.weight" if "lm_head.weight" in reader else None
    if head_key is None and not hf.get("tie_word_embeddings", False):
        raise CheckpointError(f"tensor 'lm_head.weight' missing from {hf_dir} (embeddings are not tied)")
    head = reader.view(head_key, embed.shape) if head_key else embed
    params["embed"] = build((vocab.size, cfg.hidden), _sharding_at(shardings, "embed"),
                            lambda idx: _extended_rows(vocab, embed, cfg.init_std, seed, 0, idx, False))
    params["lm_head"] = build((cfg.hidden, vocab.size), _sharding_at(shardings, "lm_head"),
                              lambda idx: _extended_rows(vocab, head, cfg.init_std, seed, 1, idx, True))
    state = _fill_state(cfg, rules, mesh, shardings, params, seed)
    return graphdef, state, shardings


def _fill_state(cfg, rules, mesh, shardings, loaded: dict[str, jax.Array], seed: int) -> nnx.State:
    """The model state with ``loaded`` params and the rest randomly initialised (only the
    rest is computed: XLA drops the unused random draws)."""
    flat_shardings = dict(nnx.to_flat_state(shardings))
    rest = [p for p in flat_shardings if ".".join(map(str, p)) not in loaded]

    def create_rest():
        flat = dict(nnx.to_flat_state(nnx.state(Bagpiper(cfg, rules, rngs=nnx.Rngs(seed)))))
        return [flat[p][...] for p in rest]

    with jax.set_mesh(mesh):
        values = jax.jit(create_rest, out_shardings=[flat_shardings[p].get_raw_value() for p in rest])()
    state = nnx.state(nnx.eval_shape(lambda: Bagpiper(cfg, rules, rngs=nnx.Rngs(seed))))
    for path, var in nnx.to_flat_state(state):
        key = ".".join(map(str, path))
        var.set_value(loaded[key] if key in loaded else values[rest.index(path)])
    return state


def _layout_view(reader: TensorReader, key: str, view: Callable, cfg: ModelConfig,
                 shape: tuple[int, ...]) -> np.ndarray:
    """Tensor ``key`` viewed in our layout; a clear error when its shape does not fit."""
    raw = reader.view(key)
    try:
        array = view(raw, cfg)
    except ValueError:
        array = None
    if array is None or tuple(array.shape) != tuple(shape):
        raise CheckpointError(f"tensor {key!r} in {reader.path} has shape {tuple(raw.shape)}, which does "
                              f"not fit the configured layout {tuple(shape)}")
    return array


def _abstract_at(state: nnx.State, dotted: str):
    node = state
    for part in dotted.split("."):
        node = node[part]
    return node.get_raw_value()


def _sharding_at(shardings: nnx.State, dotted: str):
    return _abstract_at(shardings, dotted)
