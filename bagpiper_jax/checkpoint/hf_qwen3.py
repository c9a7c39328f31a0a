"""HF Qwen3 directories (config.json + safetensors) as a source of Bagpiper params:
``train.init_from`` and ``bagpiper-convert hf-qwen3``.

Params are read shard by shard (:mod:`~bagpiper_jax.checkpoint.layout`). The vocabulary
is extended as in docs/model.md, Vocabulary: embedding and lm_head rows
``[text_offset, text_offset + V)`` are Qwen3's; every other row is N(0, init_std),
drawn per row from a seeded generator so the result does not depend on the mesh.
Parameters with no Qwen3 counterpart (stream embeddings, adaptor) keep their random
initialisation (stream embeddings start at zero).

The layout tables (``LAYER_PARAMS``, :func:`backbone_entries`) work both ways and are
shared with the reference PyTorch layout (:mod:`bagpiper_jax.convert.torch_layout`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
from jax.sharding import Mesh

from bagpiper_jax.checkpoint.errors import CheckpointError
from bagpiper_jax.checkpoint.layout import Entry, Layout, fill_state, leaf_at, read_entries, sharded_array
from bagpiper_jax.checkpoint.tensor_reader import TensorReader
from bagpiper_jax.config import ConfigError, ModelConfig, RuntimeConfig, read_json_file
from bagpiper_jax.model.create import abstract_model
from bagpiper_jax.sharding import Rules, state_shardings
from bagpiper_jax.vocab import Vocab

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


def backbone_entries(cfg: ModelConfig) -> list[Entry]:
    """The decoder layers (layer by layer, param by param) and the final norm, HF-named."""
    entries = [
        Entry(layer_key(i, layout), "decoder.blocks." + path, layout, i)
        for path, layout in LAYER_PARAMS.items()
        for i in range(cfg.layers)
    ]
    return entries + [Entry(FINAL_NORM.key, "final_norm.scale", FINAL_NORM)]


def read_hf_config(hf_dir: str | Path) -> dict:
    """The ``config.json`` of an HF Qwen3 directory; errors if it is not Qwen3."""
    path = Path(hf_dir) / "config.json"
    hf = read_json_file(path, f"an HF model config ({hf_dir})", CheckpointError)
    if hf.get("model_type") != "qwen3":
        raise CheckpointError(
            f"{path} has model_type {hf.get('model_type')!r}; expected 'qwen3' "
            f"(architectures: {hf.get('architectures')})"
        )
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
    wrong = [
        f"model.{k}={getattr(cfg, k)} but {hf_dir}/config.json gives {v}"
        for k, v in _hf_dims(hf).items()
        if getattr(cfg, k) != v
    ]
    if wrong:
        raise ConfigError("config does not match the HF checkpoint: " + "; ".join(wrong))


def _extended_rows(
    vocab: Vocab, hf_rows: np.ndarray, std: float, seed: int, table: int, index: tuple[slice, slice], transpose: bool
) -> np.ndarray:
    """A slice of an extended ``[vocab, hidden]`` table (of its transpose if ``transpose``)."""
    rows, cols = (index[1], index[0]) if transpose else index
    start, stop, _ = rows.indices(vocab.size)
    dim = hf_rows.shape[1]
    out = np.empty((stop - start, len(range(dim)[cols])), np.float32)
    lo = min(max(start, vocab.text_offset), stop)
    hi = max(min(stop, vocab.text_offset + vocab.text_size), lo)
    out[lo - start : hi - start] = hf_rows[lo - vocab.text_offset : hi - vocab.text_offset, cols]
    for r in [*range(start, lo), *range(hi, stop)]:  # seeded per (table, row): same on any mesh
        out[r - start] = np.random.default_rng([seed, table, r]).normal(0.0, std, dim)[cols]
    return out.T if transpose else out


def load_hf_qwen3(
    hf_dir: str | Path,
    cfg: ModelConfig,
    runtime: RuntimeConfig,
    mesh: Mesh,
    rules: Rules,
    seed: int = 0,
    progress: Callable[[int], None] = lambda n: None,
    lazy: bool = False,
):
    """Bagpiper params from an HF Qwen3 directory, sharded on ``mesh``.

    Returns ``(graphdef, state, shardings)`` like :func:`bagpiper_jax.model.init_model`;
    ``progress`` is called with the number of HF tensors read as they are read (with
    ``lazy``, as they are built). ``lazy``: the imported params are
    :class:`~bagpiper_jax.checkpoint.lazy_save.LazyArray` s, each read when it is written
    (``lazy_save.save_pytree``), so converting never holds the whole model.
    """
    hf = read_hf_config(hf_dir)
    check_config_matches(cfg, hf, hf_dir)
    reader = TensorReader(hf_dir)
    vocab = Vocab.from_config(cfg)
    graphdef, abstract = abstract_model(cfg, runtime, rules)
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
            leaf_at(abstract, path),
            leaf_at(shardings, path),
            lambda idx, key=key, table=table: _read_released(
                reader,
                lambda: _extended_rows(
                    vocab, reader.view(key, table_shape), cfg.init_std, seed, table, idx, table == 1
                ),
            ),
            lazy,
            lambda: progress(1),
        )
    state = fill_state(cfg, runtime, rules, mesh, shardings, params, seed)
    return graphdef, state, shardings


def _read_released(reader: TensorReader, read: Callable[[], np.ndarray]) -> np.ndarray:
    """``read()``, then the reader's mapped pages released (see ``TensorReader.release``)."""
    block = read()
    reader.release()
    return block


def hf_config_dict(cfg: ModelConfig, dtype: str = "float32", max_positions: int = 32_768) -> dict:
    """An HF ``config.json`` (Qwen3ForCausalLM) for the backbone of ``cfg`` with the text
    vocabulary only; the inverse of :func:`model_config_from_hf`."""
    return {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "vocab_size": cfg.text_vocab_size,
        "hidden_size": cfg.hidden,
        "num_hidden_layers": cfg.layers,
        "num_attention_heads": cfg.heads,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "intermediate_size": cfg.mlp,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.rms_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "max_position_embeddings": max_positions,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "tie_word_embeddings": False,
        "use_cache": True,
        "dtype": dtype,
    }
