"""The serving directory of the reference's vLLM fork (``BagpiperForConditionalGeneration``).

    DIR/model-0000i-of-0000N.safetensors + model.safetensors.index.json
                        the reference layout's tensors, keys verbatim (no ``vocab_weight``),
                        in shards of at most 5 GB (one ``model.safetensors`` when smaller)
    DIR/config.json     ``model_type`` "bagpiper": ``text_config`` (the Qwen3 backbone with
                        the whole unified vocabulary), ``audio_config`` (the tower's params
                        directory, n_window and n_window_infer included), the vocabulary
                        layout, special ids, sampling defaults and the XCodec decoder
    DIR/generation_config.json   bos / eos / pad ids
    DIR/tokenizer files copied from the tokenizer's directory (see :func:`copy_tokenizer`)

The fork renames keys when it loads them (``hf_to_vllm_mapper``), so the directory holds the
state dict exactly as the reference trains it; its fields are those of the fork's
``BagpiperConfig`` (docs/checkpoints.md).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from bagpiper_jax.audio_encoder.config import AudioEncoderConfig
from bagpiper_jax.checkpoint.errors import CheckpointError
from bagpiper_jax.checkpoint.frozen_modules import load_tower_config
from bagpiper_jax.checkpoint.hf_qwen3 import hf_config_dict
from bagpiper_jax.checkpoint.model_checkpoint import ParamsSource
from bagpiper_jax.checkpoint.safetensors_writer import write_safetensors
from bagpiper_jax.config import Config, to_dict
from bagpiper_jax.convert.torch_layout import reference_tensors, require_frozen_modules
from bagpiper_jax.vocab import ASSISTANT, AUDIO, BOS, EOS, EOT, PAD, SYSTEM, TEXT, USER, Vocab

log = logging.getLogger(__name__)

DEFAULT_DTYPE = "bfloat16"  # what the reference serves
MAX_POSITIONS = 40_960  # the text config's max_position_embeddings in the reference's served config
XCODEC_HF_MODEL_TAG = "hf-audio/xcodec-hubert-general"  # the codec the fork decodes audio with
# Fields of the fork's audio-encoder config that do not change the tower's math, at the
# values of the released tower (Qwen3-Omni's).
AUDIO_CONFIG_FIXED = {
    "dropout": 0.0,
    "attention_dropout": 0.0,
    "activation_dropout": 0.0,
    "scale_embedding": False,
    "initializer_range": 0.02,
    "max_source_positions": 1500,
    "conv_chunksize": 500,
}
# The served tokenizer: the Qwen3 tokenizer with every id shifted into the unified
# vocabulary and the special and codec tokens named (vLLM reads these files).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
)


def vllm_config(cfg: Config, tower: AudioEncoderConfig, dtype: str = DEFAULT_DTYPE) -> dict:
    """The ``config.json`` of the serving directory for run config ``cfg`` and the audio tower
    ``tower``; ``CheckpointError`` if the tower does not feed the model."""
    m, vocab = cfg.model, Vocab.from_config(cfg.model)
    if tower.output_dim != m.continuous_dim:
        raise CheckpointError(
            f"the audio tower outputs {tower.output_dim} features but model.continuous_dim is {m.continuous_dim}"
        )
    text = hf_config_dict(m, dtype, max(MAX_POSITIONS, cfg.runtime.max_frames))
    for key in ("architectures", "rope_parameters", "dtype"):
        text.pop(key)
    text.update(model_type="bagpiper_text", vocab_size=vocab.size, initializer_range=m.init_std)
    specials = {"pad": PAD, "bos": BOS, "eos": EOS, "eot": EOT, "system": SYSTEM, "user": USER}
    specials |= {"assistant": ASSISTANT, "text": TEXT, "audio": AUDIO}
    return {
        "architectures": ["BagpiperForConditionalGeneration"],
        "model_type": "bagpiper",
        "torch_dtype": dtype,
        "text_config": text,
        "audio_config": {"model_type": "bagpiper_audio_encoder", **to_dict(tower), **AUDIO_CONFIG_FIXED},
        "num_stream": m.num_streams,
        "adaptor_input_dim": m.continuous_dim,
        "vocab_size": vocab.size,
        "hidden_size": m.hidden,
        "codec_base_offset": vocab.audio_offset,
        "codec_layer_size": vocab.stream_block,
        "text_token_offset": vocab.text_offset,
        "text_token_end": vocab.audio_offset,
        **{f"{name}_token_id": token for name, token in specials.items()},
        "audio_placeholder_token_id": AUDIO,
        "initializer_range": m.init_std,
        "audio_temperature": cfg.generate.audio.temperature,
        "audio_topk": cfg.generate.audio.top_k,
        "text_temperature": cfg.generate.text.temperature,
        "text_topk": cfg.generate.text.top_k,
        "xcodec_hf_model_tag": XCODEC_HF_MODEL_TAG,
        "xcodec_sample_rate": 16_000,
    }


def write_vllm(
    source: ParamsSource,
    out: str | Path,
    dtype: str = DEFAULT_DTYPE,
    max_shard_size: int | None = None,
    tokenizer: str | Path | None = None,
    progress: Callable[[int], None] = lambda nbytes: None,
) -> list[Path]:
    """A checkpoint -> the vLLM fork's serving directory ``out`` (module docstring). The
    tokenizer files come from ``tokenizer`` (a directory), else from the directory of the
    checkpoint config's ``assets.tokenizer``. Returns the files written."""
    out = Path(out)
    if out.suffix == ".safetensors" or out.is_file():
        raise CheckpointError(f"--format vllm writes a directory; {out} names a file")
    require_frozen_modules(source, "the vLLM fork")
    config = vllm_config(source.config, load_tower_config(source.encoder_dir), dtype)
    specs, tensors = reference_tensors(source, np.dtype(dtype))
    files = write_safetensors(out, specs, tensors, max_shard_size, {"bagpiper_step": str(source.step)}, progress)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = {"bos_token_id": BOS, "eos_token_id": EOS, "pad_token_id": PAD}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    files += [out / "config.json", out / "generation_config.json"]
    asset = source.config.assets.tokenizer
    if tokenizer:
        directory = Path(tokenizer)
    elif asset:
        directory = Path(asset) if Path(asset).is_dir() else Path(asset).parent
    else:
        log.warning("no tokenizer files copied to %s: the checkpoint's config names no assets.tokenizer", out)
        return files
    return files + copy_tokenizer(directory, out, Vocab.from_config(source.config.model))


def copy_tokenizer(directory: Path, out: Path, vocab: Vocab) -> list[Path]:
    """Copies the served tokenizer's files (:data:`TOKENIZER_FILES`) from ``directory`` to
    ``out`` and warns naming those missing. A ``tokenizer.json`` whose ids are not the
    unified vocabulary's (e.g. Qwen3's own, which training reads from ``assets.tokenizer``)
    would make vLLM read every text id 256 off: then nothing is copied and a warning says so."""
    file = directory / "tokenizer.json"
    if file.is_file():
        tokenizer = Tokenizer.from_file(str(file))
        named = {vocab.special_name(i): i for i in (BOS, AUDIO)}
        if any(tokenizer.token_to_id(name) != i for name, i in named.items()):
            log.warning(
                "no tokenizer files copied to %s: %s is not the Bagpiper tokenizer (%s), its ids are not the "
                "unified vocabulary's (e.g. Qwen3's own); vLLM needs the Bagpiper tokenizer files (%s), "
                "e.g. from the vLLM fork's examples/espnet/convert/bootstrap_assets.py --model bagpiper "
                "(pass their directory with --tokenizer)",
                out,
                file,
                ", ".join(f"{name} = id {i}" for name, i in named.items()),
                ", ".join(TOKENIZER_FILES),
            )
            return []
    present = [name for name in TOKENIZER_FILES if (directory / name).is_file()]
    missing = [name for name in TOKENIZER_FILES if name not in present]
    if missing:
        log.warning("tokenizer files missing from %s (not copied to %s): %s", directory, out, ", ".join(missing))
    for name in present:
        shutil.copyfile(directory / name, out / name)
    return [out / name for name in present]
