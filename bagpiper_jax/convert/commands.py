"""The conversions behind ``bagpiper-convert`` (docs/checkpoints.md), one function per subcommand.

- ``hf-xcodec --hf DIR --out DIR``: HF XCodec -> codec params directory;
- ``hf-audio-encoder --hf DIR --out DIR``: the audio tower of an HF Qwen3-Omni (or bare
  tower) directory -> audio tower params directory;
- ``hf-qwen3 --hf DIR [--config CFG] --out CKPT``: HF Qwen3 -> step-0 model checkpoint;
- ``to-torch --checkpoint CKPT|RUN_DIR [--step N] --out FILE_OR_DIR [--format F]``: any
  checkpoint -> the reference PyTorch layout as safetensors (or, with ``--hf-text-only``, a
  plain HF Qwen3 directory), an ESPnet-native ``.pt`` (``--format espnet``) or the vLLM
  fork's serving directory (``--format vllm``);
- ``from-torch --torch FILE_OR_DIR --config CFG --out CKPT``: the inverse (safetensors, or a
  ``.pt`` such as ESPnet's released files);
- ``check --checkpoint CKPT --torch FILE_OR_DIR``: our logits against an independent
  PyTorch forward of the same weights (:mod:`~bagpiper_jax.convert.logit_check`).

All stream: params are read one at a time (on import, memory-mapped tensors read shard by
shard into one param, which is written and dropped before the next is read
(``lazy_save``); on export, one param restored at a time), so converting needs far less
RAM than one copy of the model.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bagpiper_jax.checkpoint.errors import CheckpointError
from bagpiper_jax.checkpoint.frozen_modules import load_codec_config, load_tower_config, save_codec, save_tower_params
from bagpiper_jax.checkpoint.hf_qwen3 import (
    backbone_entries,
    hf_config_dict,
    load_hf_qwen3,
    model_config_from_hf,
    read_hf_config,
)
from bagpiper_jax.checkpoint.model_checkpoint import (
    FrozenModules,
    ParamsSource,
    load_frozen_modules,
    save_model_checkpoint,
)
from bagpiper_jax.checkpoint.safetensors_writer import write_safetensors
from bagpiper_jax.checkpoint.tensor_reader import TensorReader
from bagpiper_jax.config import Config, ConfigError, load_config
from bagpiper_jax.convert import espnet, hf_audio_encoder, hf_xcodec, torch_layout, vllm
from bagpiper_jax.sharding import make_mesh
from bagpiper_jax.vocab import Vocab

DEFAULT_MAX_SHARD_SIZE = "5GB"
FORMATS = ("safetensors", "espnet", "vllm")
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str) -> int:
    """``"5GB"`` -> 5e9 bytes, ``"100KiB"`` -> 102400, ``"4096"`` -> 4096."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).upper() not in _UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 5GB, 500MiB, 1000000)")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def convert_hf_xcodec(hf_dir: str | Path, out: str | Path) -> Path:
    """HF XCodec directory -> codec params directory."""
    cfg, params = hf_xcodec.import_hf_xcodec(hf_dir)
    return save_codec(out, cfg, params)


def convert_hf_audio_encoder(hf_dir: str | Path, out: str | Path) -> Path:
    """The audio tower of an HF Qwen3-Omni (or bare tower) directory -> params directory."""
    config, params = hf_audio_encoder.import_hf(hf_dir)
    return save_tower_params(out, config, params)


def convert_hf_qwen3(
    hf_dir: str | Path, out: str | Path, config: str | Path | None = None, progress: bool = True
) -> Path:
    """HF Qwen3 directory -> step-0 model checkpoint.

    Without ``config`` the model dimensions come from the HF ``config.json`` and everything
    else is the 8B default; a given config must match the HF dimensions (``ConfigError``
    naming the field). Codec / audio tower params directories named by ``data.codec`` /
    ``model.audio_encoder`` are stored with it.
    """
    cfg = load_config(config) if config else Config(model=model_config_from_hf(read_hf_config(hf_dir)))
    mesh = make_mesh(cfg.mesh)
    total = len(backbone_entries(cfg.model)) + 2  # + embed, lm_head
    with tqdm(total=total, unit="tensor", desc="read HF Qwen3", disable=not progress) as bar:
        _, params, _ = load_hf_qwen3(
            hf_dir, cfg.model, cfg.runtime, mesh, cfg.mesh.rules, cfg.seed, bar.update, lazy=True
        )
        modules = load_frozen_modules(cfg.assets.codec, cfg.assets.audio_encoder)
        return save_model_checkpoint(out, cfg, params, modules, source=f"hf-qwen3 {Path(hf_dir).absolute()}")


def to_torch(
    checkpoint: str | Path,
    out: str | Path,
    step: int | None = None,
    dtype: str | None = None,
    max_shard_size: int = parse_size(DEFAULT_MAX_SHARD_SIZE),
    hf_text_only: bool = False,
    progress: bool = True,
    fmt: str = "safetensors",
    container: str = "plain",
    vocab_weight: str | None = None,
    tokenizer: str | Path | None = None,
) -> list[Path]:
    """A model checkpoint or run directory (latest step unless ``step``) -> PyTorch.

    ``fmt``: ``safetensors`` — the reference layout (or, with ``hf_text_only``, a plain HF
    Qwen3 directory), dtype as stored unless ``dtype``; ``espnet`` — one ``.pt`` the
    reference's strict loader accepts (``container`` plain or deepspeed, ``vocab_weight``
    recipe or ones, default: the one the checkpoint came with, else recipe), bfloat16 unless
    ``dtype``; ``vllm`` — the vLLM fork's serving directory (``tokenizer``: the directory of
    the served tokenizer's files, default ``assets.tokenizer``'s), bfloat16 unless ``dtype``.
    Returns the files written."""
    if fmt not in FORMATS:
        raise CheckpointError(f"--format must be one of {FORMATS}, got {fmt!r}")
    if fmt != "safetensors" and hf_text_only:
        raise CheckpointError(f"--hf-text-only applies to --format safetensors, not {fmt}")
    source = ParamsSource(checkpoint, step)
    out = Path(out)
    with tqdm(unit="B", unit_scale=True, desc=f"write {out.name}", disable=not progress) as bar:
        if fmt == "espnet":
            return [
                espnet.write_espnet(source, out, dtype or espnet.DEFAULT_DTYPE, container, vocab_weight, bar.update)
            ]
        if fmt == "vllm":
            return vllm.write_vllm(source, out, dtype or vllm.DEFAULT_DTYPE, max_shard_size, tokenizer, bar.update)
        if hf_text_only and out.suffix == ".safetensors":
            raise CheckpointError(f"--hf-text-only writes an HF directory; {out} names a file")
        np_dtype = np.dtype(dtype) if dtype else None  # ml_dtypes registers "bfloat16"
        specs, tensors = torch_layout.reference_tensors(source, np_dtype, hf_text_only)
        bar.total = sum(s.nbytes for s in specs)
        files = write_safetensors(out, specs, tensors, max_shard_size, {"bagpiper_step": str(source.step)}, bar.update)
    if hf_text_only:
        cfg = source.config.model
        name = (np_dtype or source.params["embed"][1]).name
        (out / "config.json").write_text(
            json.dumps(hf_config_dict(cfg, name, source.config.runtime.max_frames), indent=2)
        )
        files.append(out / "config.json")
    return files


def from_torch(torch_path: str | Path, config: str | Path, out: str | Path, progress: bool = True) -> Path:
    """Reference-layout PyTorch weights -> model checkpoint: safetensors, or ``.pt``/``.bin``
    loaded with ``weights_only=True`` (a state dict, or DeepSpeed's ``{"module": state_dict}``
    as ESPnet releases them), in any float dtype. Codec / audio tower tensors need
    ``assets.codec`` / ``assets.audio_encoder`` params directories in ``config`` (their
    ``config.json`` gives the module's dimensions). A ``vocab_weight`` (ESPnet's loss-weight
    buffer) must be all ones or the recipe's weights; the checkpoint records which, for export."""
    cfg = load_config(config)
    reader = TensorReader(torch_path)
    vocab_weight = espnet.read_vocab_weight(reader, Vocab.from_config(cfg.model))
    torch_layout.check_no_unknown(reader, cfg.model, allowed=(espnet.VOCAB_WEIGHT,))
    modules = FrozenModules()
    if torch_layout.has_prefix(reader, torch_layout.CODEC_PREFIX):
        codec_cfg = load_codec_config(_module_dir(cfg.assets.codec, "assets.codec", "codec", torch_path))
        modules.codec = (codec_cfg, torch_layout.read_codec(torch_path, codec_cfg))
    if torch_layout.has_prefix(reader, torch_layout.ENCODER_PREFIX):
        directory = _module_dir(cfg.assets.audio_encoder, "assets.audio_encoder", "audio tower", torch_path)
        encoder_cfg = load_tower_config(directory)
        modules.audio_encoder = (encoder_cfg, torch_layout.read_encoder(torch_path, encoder_cfg))
    mesh = make_mesh(cfg.mesh)
    entries = torch_layout.model_entries(cfg.model)
    meta = {espnet.VOCAB_WEIGHT: vocab_weight} if vocab_weight else {}
    with tqdm(total=len(entries), unit="tensor", desc="convert torch", disable=not progress) as bar:
        _, params, _ = torch_layout.read_model(
            reader, cfg.model, cfg.runtime, mesh, cfg.mesh.rules, bar.update, lazy=True
        )
        source = f"from-torch {Path(torch_path).absolute()}"
        return save_model_checkpoint(out, cfg, params, modules, source=source, **meta)


def _module_dir(value: str, field: str, what: str, torch_path) -> str:
    if not value:
        raise ConfigError(
            f"{torch_path} holds {what} tensors: set {field} to its params directory "
            f"(whose config.json gives the {what}'s dimensions)"
        )
    return value
