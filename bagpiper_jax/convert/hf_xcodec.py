"""HF XCodec directory (config.json + safetensors / .bin) <-> codec params.

Our parameter names are the HF ``XcodecModel`` state-dict keys, except the HuBERT
positional conv's weight norm, stored as ``...pos_conv_embed.conv.weight_g/weight_v``,
which HF writes as ``parametrizations.weight.original0/1`` (current torch) or as
``weight_g/weight_v`` (legacy ``torch.nn.utils.weight_norm``); both are read, and export
writes either. Keys may carry the Bagpiper checkpoint prefix ``PREFIX``. Tensors are
copied unchanged (same layout, dtype and bits), so import -> export is bit-exact.

CLI: ``bagpiper-convert hf-xcodec --hf DIR --out DIR``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from bagpiper_jax.checkpoint.errors import CheckpointError
from bagpiper_jax.checkpoint.tensor_reader import TensorReader
from bagpiper_jax.codec.config import XCodecConfig
from bagpiper_jax.codec.params import abstract_model, variable_names
from bagpiper_jax.config import ConfigError, from_dict, read_json_file, to_dict

PREFIX = "multimodal_io_dict.discrete_audio.codec_model."
_POS_CONV = "semantic_model.encoder.pos_conv_embed.conv."
WEIGHT_NORM_FORMS = {
    "parametrizations": {
        "weight_g": "parametrizations.weight.original0",
        "weight_v": "parametrizations.weight.original1",
    },
    "legacy": {"weight_g": "weight_g", "weight_v": "weight_v"},
}


# HF HuBERT fields that change the math but that this implementation does not support:
# (field, the only supported value).
_HUBERT_FIXED = (
    ("feat_extract_norm", "group"),
    ("do_stable_layer_norm", False),
    ("conv_pos_batch_norm", False),
    ("hidden_act", "gelu"),
    ("feat_extract_activation", "gelu"),
)


def config_from_hf(d: dict[str, Any], source: str = "config.json") -> XCodecConfig:
    """An HF ``XcodecConfig`` dict -> :class:`XCodecConfig`; fields we do not model are
    ignored unless they change the math, in which case an unsupported value raises."""
    if d.get("model_type", "xcodec") != "xcodec":
        raise ConfigError(f"{source}: model_type is {d.get('model_type')!r}, expected 'xcodec'")
    sem = d.get("semantic_model_config") or {}
    if sem.get("model_type", "hubert") != "hubert":
        raise ConfigError(
            f"{source}: semantic_model_config.model_type is {sem.get('model_type')!r}; only 'hubert' is supported"
        )
    for key, value in _HUBERT_FIXED:
        if key in sem and sem[key] != value:
            raise ConfigError(f"{source}: semantic_model_config.{key} = {sem[key]!r} is not supported (only {value!r})")
    ac = d.get("acoustic_model_config") or {}
    if ac.get("model_type", "dac") != "dac":
        raise ConfigError(f"{source}: acoustic_model_config.model_type is {ac.get('model_type')!r}, expected 'dac'")
    # sub-configs under our names ("semantic" = semantic_model_config, "acoustic" = acoustic_model_config)
    cfg = from_dict(XCodecConfig, {**d, "semantic": sem, "acoustic": ac}, source, lenient=True)
    if d.get("codebook_dim") not in (None, cfg.codebook_dim):
        raise ConfigError(
            f"{source}: codebook_dim {d['codebook_dim']} must equal acoustic + semantic "
            f"hidden sizes ({cfg.codebook_dim})"
        )
    return cfg


def config_to_hf(cfg: XCodecConfig) -> dict[str, Any]:
    """An HF ``XcodecConfig`` dict that ``XcodecConfig(**d)`` / ``from_pretrained`` accepts."""
    top = {k: v for k, v in to_dict(cfg).items() if k not in ("semantic", "acoustic")}
    semantic = to_dict(cfg.semantic)
    semantic.update(dict(_HUBERT_FIXED), model_type="hubert", num_feat_extract_layers=len(cfg.semantic.conv_dim))
    acoustic = to_dict(cfg.acoustic)
    acoustic.update(model_type="dac", hop_length=cfg.hop_length)
    return {
        **top,
        "model_type": "xcodec",
        "architectures": ["XcodecModel"],
        "codebook_dim": cfg.codebook_dim,
        "semantic_model_config": semantic,
        "acoustic_model_config": acoustic,
    }


def read_hf_config(hf_dir: str | Path) -> XCodecConfig:
    path = Path(hf_dir) / "config.json"
    return config_from_hf(read_json_file(path, f"an HF XCodec config ({hf_dir})", CheckpointError), str(path))


def hf_key(name: str, weight_norm: str = "parametrizations") -> str:
    """HF state-dict key (no prefix) of one of our parameter names."""
    if name.startswith(_POS_CONV) and name[len(_POS_CONV) :] in ("weight_g", "weight_v"):
        return _POS_CONV + WEIGHT_NORM_FORMS[weight_norm][name[len(_POS_CONV) :]]
    return name


def _reader(hf_dir: str | Path) -> TensorReader:
    """Reads the codec keys, under the Bagpiper prefix when the checkpoint has it."""
    try:
        return TensorReader(hf_dir, strip_prefixes=(PREFIX,), only_prefixes=(PREFIX,))
    except CheckpointError:
        return TensorReader(hf_dir)


def import_hf_xcodec(hf_dir: str | Path) -> tuple[XCodecConfig, dict[str, np.ndarray]]:
    """Reads an HF XCodec directory: (config, flat name -> array), every key checked.

    Raises:
      CheckpointError / ConfigError: naming the missing or mis-shaped key, a key this
        model has no place for, or the bad config field.
    """
    cfg = read_hf_config(hf_dir)
    reader = _reader(hf_dir)
    return cfg, _collect(cfg, reader.get, reader.keys(), str(hf_dir))


def params_from_hf_state(cfg: XCodecConfig, state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """An in-memory HF state dict (no prefix; e.g. ``{k: v.numpy() for k, v in
    model.state_dict().items()}``) -> flat params, with the same checks as a directory."""

    def get(key, shape):
        if key not in state:
            raise CheckpointError(f"tensor {key!r} missing from the state dict")
        if tuple(state[key].shape) != tuple(shape):
            raise CheckpointError(f"tensor {key!r} has shape {tuple(state[key].shape)}, expected {tuple(shape)}")
        return np.asarray(state[key])

    return _collect(cfg, get, state.keys(), "the state dict")


def _collect(cfg: XCodecConfig, get, keys, source: str) -> dict[str, np.ndarray]:
    """Reads every variable of the model through ``get(hf_key, shape)``; any key in
    ``keys`` left unread is an error."""
    form = "parametrizations" if _POS_CONV + "parametrizations.weight.original0" in keys else "legacy"
    params, used = {}, set()
    for name, var in variable_names(abstract_model(cfg)).items():
        key = hf_key(name, form)
        params[name] = get(key, tuple(var.shape))
        used.add(key)
    unexpected = sorted(set(keys) - used)
    if unexpected:
        raise CheckpointError(
            f"{source} has {len(unexpected)} tensor(s) with no place in the XCodec model "
            f"of its config: {unexpected[:5]}"
        )
    return params


def export_hf_state(
    params: dict[str, np.ndarray], prefix: str = "", weight_norm: str = "parametrizations"
) -> dict[str, np.ndarray]:
    """Flat params -> HF ``XcodecModel`` state dict (``prefix`` e.g. ``PREFIX``)."""
    if weight_norm not in WEIGHT_NORM_FORMS:
        raise ValueError(f"weight_norm must be one of {sorted(WEIGHT_NORM_FORMS)}, got {weight_norm!r}")
    return {prefix + hf_key(name, weight_norm): np.asarray(value) for name, value in params.items()}


def save_hf_xcodec(
    out_dir: str | Path, cfg: XCodecConfig, params: dict[str, np.ndarray], weight_norm: str = "parametrizations"
) -> Path:
    """Writes an HF XCodec directory (``config.json`` + ``model.safetensors``) that
    ``XcodecModel.from_pretrained`` loads."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: np.ascontiguousarray(v) for k, v in export_hf_state(params, weight_norm=weight_norm).items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config_to_hf(cfg), indent=2))
    return out
