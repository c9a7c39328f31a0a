"""Params directories: the one on-disk format of converted weights.

A codec, an audio tower and a model checkpoint are each stored as::

    DIR/config.json   {"format": "bagpiper-params", "kind": KIND, "config": {...}, ...}
    DIR/params/       Orbax checkpoint (the ``StandardSave`` layout) of the params pytree

``KIND`` is ``"xcodec"``, ``"audio_encoder"`` or ``"model"``; ``"config"`` is that
module's config as a plain dict (for a model checkpoint, the whole run config); further
keys (a model checkpoint's ``step`` and ``source``) are metadata. Directories written
before this format are read too: a codec's ``{"format": "bagpiper-xcodec", "xcodec":
...}``, an audio tower's bare config fields, and a model checkpoint's ``{"format":
"bagpiper-model", ...}`` with its config in ``config_resolved.json``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from bagpiper_jax.checkpoint import integrity
from bagpiper_jax.checkpoint.errors import CheckpointError
from bagpiper_jax.config import read_json_file

FORMAT = "bagpiper-params"
KINDS = ("xcodec", "audio_encoder", "model")
_CONVERT_HINT = {
    "xcodec": "bagpiper-convert hf-xcodec",
    "qwen3_omni_moe": "bagpiper-convert hf-audio-encoder",
    "qwen3_omni_moe_audio_encoder": "bagpiper-convert hf-audio-encoder",
    "qwen3": "bagpiper-convert hf-qwen3",
}


@dataclasses.dataclass(frozen=True)
class ParamsInfo:
    """What ``DIR/config.json`` says: the kind, the module's config and the metadata."""

    kind: str
    config: dict
    meta: dict


def save_params(directory: str | Path, params: Any, kind: str, config: dict, **meta) -> Path:
    """Writes ``params`` (a pytree of arrays) and ``config.json`` under ``directory``."""
    directory = Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(directory / "params", params, force=True)
        ckptr.wait_until_finished()
    if jax.process_index() == 0:
        integrity.seal(directory / "params")
    return write_info(directory, kind, config, **meta)


def write_info(directory: str | Path, kind: str, config: dict, **meta) -> Path:
    """Writes ``DIR/config.json`` (the params are written separately, e.g. by ``lazy_save``)."""
    if kind not in KINDS:
        raise ValueError(f"params kind must be one of {KINDS}, got {kind!r}")
    directory = Path(directory).absolute()
    body = {"format": FORMAT, "kind": kind, "config": config, **meta}
    (directory / "config.json").write_text(json.dumps(body, indent=1, sort_keys=True))
    return directory


def read_info(directory: str | Path, kind: str | None = None) -> ParamsInfo:
    """``DIR/config.json`` of a params directory (either format), checked to be of ``kind``."""
    directory = Path(directory)
    path = directory / "config.json"
    body = read_json_file(path, "a params directory's config.json (bagpiper-convert output)", CheckpointError)
    if body.get("format") == FORMAT:
        info = ParamsInfo(
            body.get("kind"),
            body.get("config"),
            {k: v for k, v in body.items() if k not in ("format", "kind", "config")},
        )
        if info.kind not in KINDS or not isinstance(info.config, dict):
            raise CheckpointError(f"{path}: 'kind' must be one of {KINDS} and 'config' an object")
    else:
        info = _legacy_info(directory, body)
    if kind is not None and info.kind != kind:
        raise CheckpointError(f"{directory} holds {info.kind} params, expected {kind}")
    return info


def _legacy_info(directory: Path, body: dict) -> ParamsInfo:
    path = directory / "config.json"
    if body.get("format") == "bagpiper-xcodec" and isinstance(body.get("xcodec"), dict):
        return ParamsInfo("xcodec", body["xcodec"], {})
    if body.get("format") == "bagpiper-model":
        config = read_json_file(
            directory / "config_resolved.json", "the model checkpoint's run config", CheckpointError
        )
        return ParamsInfo("model", config, {k: v for k, v in body.items() if k != "format"})
    if "format" not in body and "d_model" in body and "model_type" not in body:
        return ParamsInfo("audio_encoder", body, {})
    hint = _CONVERT_HINT.get(body.get("model_type"))
    raise CheckpointError(
        f"{path} is not a bagpiper params config"
        + (f" (it looks like an HF directory: convert it with `{hint}`)" if hint else "")
    )


def is_params_dir(directory: str | Path, kind: str) -> bool:
    """Whether ``directory`` is a params directory of ``kind`` (either format)."""
    try:
        return read_info(directory).kind == kind
    except CheckpointError:
        return False


def load_params(directory: str | Path, target: Any = None) -> Any:
    """Restores ``DIR/params``; ``target`` (a pytree of ``jax.ShapeDtypeStruct`` with
    shardings) places them on a mesh, otherwise they land on the default device."""
    directory = Path(directory).absolute()
    if not (directory / "params").is_dir():
        raise CheckpointError(f"{directory / 'params'} missing: {directory} is not a params directory")
    integrity.check_intact(directory / "params", "params directory")
    with ocp.StandardCheckpointer() as ckptr:
        if target is None:
            meta = ckptr.metadata(directory / "params")
            tree = meta.item_metadata.tree if hasattr(meta, "item_metadata") else meta
            device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
            target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)
        try:
            return ckptr.restore(directory / "params", target)
        except ValueError as e:
            raise CheckpointError(f"params in {directory} do not match its config.json: {e}") from e
