"""HF ↔ JAX conversion of the audio tower (``bagpiper-convert hf-audio-encoder``).

Reads only the audio tower's tensors from a full Qwen3-Omni directory (names under
``thinker.audio_tower.`` or ``thinker.model.audio_tower.``; the 30B language model is never
indexed or read) or from a bare ``Qwen3OmniMoeAudioEncoder`` directory. Export writes HF
names back; the layout changes are transposes/reshapes only, so torch → ours → torch is
bit-exact (in the source dtype).

Layouts (HF → ours): Linear ``[out, in]`` → kernel ``[in, out]`` (attention projections
split ``heads × head_dim``); Conv2d ``[out, in, freq, time]`` → ``[time, freq, in, out]``;
LayerNorm ``weight`` → ``scale``; per-layer tensors stacked on a leading layers axis.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from bagpiper_jax.audio_encoder.config import AudioEncoderConfig
from bagpiper_jax.audio_encoder.tower import abstract_tower
from bagpiper_jax.checkpoint.errors import CheckpointError
from bagpiper_jax.checkpoint.tensor_reader import TensorReader
from bagpiper_jax.config import ConfigError, from_dict, read_json_file, to_dict

HF_MODEL_TYPE = "qwen3_omni_moe_audio_encoder"
HF_PREFIXES = ("thinker.audio_tower.", "thinker.model.audio_tower.")

# (our module, HF module, kind, input rank of the kernel) — kind: linear | conv | norm.
_TOP_MODULES = (
    ("conv2d1", "conv2d1", "conv", 0),
    ("conv2d2", "conv2d2", "conv", 0),
    ("conv2d3", "conv2d3", "conv", 0),
    ("conv_out", "conv_out", "linear", 1),
    ("ln_post", "ln_post", "norm", 0),
    ("proj1", "proj1", "linear", 1),
    ("proj2", "proj2", "linear", 1),
)
_LAYER_MODULES = (
    ("self_attn_layer_norm", "self_attn_layer_norm", "norm", 0),
    ("q_proj", "self_attn.q_proj", "linear", 1),
    ("k_proj", "self_attn.k_proj", "linear", 1),
    ("v_proj", "self_attn.v_proj", "linear", 1),
    ("out_proj", "self_attn.out_proj", "linear", 2),
    ("final_layer_norm", "final_layer_norm", "norm", 0),
    ("fc1", "fc1", "linear", 1),
    ("fc2", "fc2", "linear", 1),
)
_HF_PARAM_NAME = {"kernel": "weight", "scale": "weight", "bias": "bias"}


def config_from_hf(path: str | Path) -> AudioEncoderConfig:
    """The tower config of an HF ``config.json`` (or the directory holding it): a bare
    audio encoder config or a full Qwen3-Omni config with ``thinker_config.audio_config``.
    HF fields that do not change the computation (dropout, init range, ...) are ignored."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    values = read_json_file(path, "an HF model config", ConfigError)
    if values.get("model_type") == HF_MODEL_TYPE:
        return from_dict(AudioEncoderConfig, values, str(path), lenient=True)
    audio = (values.get("thinker_config") or {}).get("audio_config")
    if not isinstance(audio, dict):
        raise ConfigError(
            f"{path}: neither a '{HF_MODEL_TYPE}' config nor one with "
            f"'thinker_config.audio_config' (model_type={values.get('model_type')!r})"
        )
    return from_dict(AudioEncoderConfig, audio, f"{path} thinker_config.audio_config", lenient=True)


def config_to_hf(config: AudioEncoderConfig) -> dict:
    """A config.json body that ``Qwen3OmniMoeAudioEncoder.from_pretrained`` accepts."""
    return {"model_type": HF_MODEL_TYPE, "architectures": ["Qwen3OmniMoeAudioEncoder"], **to_dict(config)}


def abstract_params(config: AudioEncoderConfig) -> dict:
    """Nested dict of ``jax.ShapeDtypeStruct`` for the tower's parameters (float32)."""
    return nnx.to_pure_dict(nnx.state(abstract_tower(config), nnx.Param))


def _hf_shape(kind: str, name: str, shape: tuple[int, ...], in_rank: int) -> tuple[int, ...]:
    """Shape of the HF tensor holding our parameter of ``shape``."""
    if name == "kernel" and kind == "linear":
        return (int(np.prod(shape[in_rank:])), int(np.prod(shape[:in_rank])))
    if name == "kernel" and kind == "conv":
        return tuple(reversed(shape))
    return (int(np.prod(shape)),)


def _to_ours(kind: str, name: str, tensor: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if name == "kernel" and kind == "linear":
        return tensor.T.reshape(shape)
    if name == "kernel" and kind == "conv":
        return tensor.transpose(3, 2, 1, 0)
    return tensor.reshape(shape)


def _to_hf(kind: str, name: str, array: np.ndarray, in_rank: int) -> np.ndarray:
    if name == "kernel" and kind == "linear":
        fan_in = int(np.prod(array.shape[:in_rank]))
        return array.reshape(fan_in, -1).T
    if name == "kernel" and kind == "conv":
        return array.transpose(3, 2, 1, 0)
    return array.reshape(-1)


def _entries(config: AudioEncoderConfig) -> Iterator[tuple]:
    """(our param path, its HF tensor names (one per stacked layer, or one), kind, in_rank,
    our shape) for every parameter, in a fixed order."""
    shapes = abstract_params(config)
    modules = [((ours,), [hf], kind, in_rank, shapes[ours]) for ours, hf, kind, in_rank in _TOP_MODULES]
    modules += [
        (
            ("layers", ours),
            [f"layers.{i}.{hf}" for i in range(config.encoder_layers)],
            kind,
            in_rank,
            shapes["layers"][ours],
        )
        for ours, hf, kind, in_rank in _LAYER_MODULES
    ]
    for path, hf_modules, kind, in_rank, params in modules:
        for name, spec in params.items():
            yield path + (name,), [f"{m}.{_HF_PARAM_NAME[name]}" for m in hf_modules], kind, in_rank, tuple(spec.shape)


def _one(path: tuple, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of one HF tensor's worth of our param (one layer of a stacked one)."""
    return shape[1:] if path[0] == "layers" else shape


def hf_shapes(config: AudioEncoderConfig, prefix: str = "") -> list[tuple[str, tuple[int, ...]]]:
    """``(prefix + HF name, shape)`` of every tower tensor, in :func:`iter_hf_tensors` order,
    from the config alone."""
    return [
        (prefix + name, _hf_shape(kind, path[-1], _one(path, shape), in_rank))
        for path, names, kind, in_rank, shape in _entries(config)
        for name in names
    ]


def from_hf_tensors(config: AudioEncoderConfig, get: Callable[[str], np.ndarray]) -> dict:
    """Builds our params (nested dict of float32 numpy arrays) from HF tensors.

    Args:
      get: returns the HF tensor of a name relative to the tower (``conv2d1.weight``);
        raises when it is missing.
    """
    params: dict = {}
    for path, hf_names, kind, in_rank, shape in _entries(config):
        one = _one(path, shape)
        expected = _hf_shape(kind, path[-1], one, in_rank)
        arrays = []
        for hf_name in hf_names:
            tensor = np.asarray(get(hf_name), np.float32)
            if tensor.shape != expected:
                raise CheckpointError(
                    f"tensor {hf_name!r} has shape {tuple(tensor.shape)}, the config "
                    f"needs {expected} (for {'.'.join(path)})"
                )
            arrays.append(_to_ours(kind, path[-1], tensor, one))
        node = params
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = np.stack(arrays) if path[0] == "layers" else arrays[0]
    return params


def iter_hf_tensors(
    config: AudioEncoderConfig, params: dict, prefix: str = "", dtype=np.float32
) -> Iterator[tuple[str, np.ndarray]]:
    """Yields ``(prefix + HF name, array in dtype)`` for every tower tensor, one at a time.

    ``dtype`` should be the source checkpoint's dtype (e.g. ``ml_dtypes.bfloat16``) for a
    bit-exact round trip.
    """
    for path, hf_names, kind, in_rank, _ in _entries(config):
        value = params
        for key in path:
            value = value[key]
        value = np.asarray(jax.device_get(value))
        slices = list(value) if path[0] == "layers" else [value]
        for name, array in zip(hf_names, slices):
            yield f"{prefix}{name}", _to_hf(kind, path[-1], array, in_rank).astype(dtype)


def open_hf_tower(hf_dir: str | Path) -> tuple[AudioEncoderConfig, TensorReader]:
    """Config and a reader restricted to the audio tower of an HF directory."""
    hf_dir = Path(hf_dir)
    config = config_from_hf(hf_dir)
    model_type = json.loads((hf_dir / "config.json").read_text()).get("model_type")
    if model_type == HF_MODEL_TYPE:
        return config, TensorReader(hf_dir)
    return config, TensorReader(hf_dir, strip_prefixes=HF_PREFIXES, only_prefixes=HF_PREFIXES)


def params_from_reader(config: AudioEncoderConfig, reader: TensorReader, key_prefix: str = "") -> dict:
    """Tower params (nested dict, float32) from every tensor of ``reader``; a tensor the
    config has no place for is an error naming it (``key_prefix`` + its name)."""
    used: set[str] = set()

    def get(name: str) -> np.ndarray:
        used.add(name)
        return reader.get(name)

    params = from_hf_tensors(config, get)
    unused = sorted(set(reader.keys()) - used)
    if unused:
        raise CheckpointError(
            f"{reader.path} holds audio tower tensors the config does not use "
            f"(encoder_layers={config.encoder_layers}?): {[key_prefix + k for k in unused[:5]]}"
        )
    return params


def import_hf(hf_dir: str | Path) -> tuple[AudioEncoderConfig, dict]:
    """(config, params as a nested dict of float32 numpy arrays) from an HF directory."""
    config, reader = open_hf_tower(hf_dir)
    return config, params_from_reader(config, reader)


def export_hf(config: AudioEncoderConfig, params: dict, out_dir: str | Path, dtype=np.float32) -> Path:
    """Writes a bare HF ``Qwen3OmniMoeAudioEncoder`` directory (config.json + model.safetensors)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(
        dict(iter_hf_tensors(config, params, dtype=dtype)),
        str(out_dir / "model.safetensors"),
        metadata={"format": "pt"},
    )
    (out_dir / "config.json").write_text(json.dumps(config_to_hf(config), indent=2))
    return out_dir
