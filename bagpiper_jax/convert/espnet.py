"""ESPnet-native Bagpiper checkpoints: the released ``espnet/bagpiper`` (``base.pt``),
``-sft`` / ``-tts-sft`` (``model.pt``) files and what the reference's strict loader accepts.

A torch pickle holding the plain state dict or DeepSpeed's ``{"module": state_dict}``:
the reference layout's parameters (:mod:`~bagpiper_jax.convert.torch_layout`; 1,381 bf16
tensors at 8B) plus ``vocab_weight``, a float32 ``[vocab]`` per-token loss weight that is
not a parameter but that the reference's strict loader requires. Its values differ by
reference version: all ones (the reference's tests and older loss), or the recipe's stream
weights — 1 for special and text ids, 1 / num_streams for codec ids — which the newest loss
reads from it (docs/checkpoints.md).

Import recognises which of the two a file carries (anything else is an error summarising
the values) and the model checkpoint keeps its name in ``config.json`` (``vocab_weight``),
so an export regenerates exactly the same float32 values. Export writes the tensors one at
a time straight into the ``.pt`` (:mod:`~bagpiper_jax.checkpoint.torch_writer`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bagpiper_jax.audio_encoder.config import AudioEncoderConfig
from bagpiper_jax.checkpoint.errors import CheckpointError
from bagpiper_jax.checkpoint.model_checkpoint import ParamsSource
from bagpiper_jax.checkpoint.safetensors_writer import TensorSpec
from bagpiper_jax.checkpoint.tensor_reader import DEEPSPEED_KEY, TensorReader
from bagpiper_jax.checkpoint.torch_writer import write_torch_file
from bagpiper_jax.codec.config import XCodecConfig
from bagpiper_jax.config import ModelConfig
from bagpiper_jax.convert.torch_layout import reference_plan, reference_tensors, require_frozen_modules
from bagpiper_jax.vocab import Vocab

VOCAB_WEIGHT = "vocab_weight"  # the state-dict key, and the model checkpoint's metadata key
VOCAB_WEIGHTS = ("recipe", "ones")  # the values a vocab_weight may hold (see vocab_weight_values)
CONTAINERS = ("plain", "deepspeed")  # the state dict itself, or {"module": state dict}
DEFAULT_DTYPE = "bfloat16"  # the released files' parameters


def vocab_weight_values(kind: str, vocab: Vocab) -> np.ndarray:
    """float32 ``[vocab.size]``: ``"ones"``, or ``"recipe"``: 1 for special and text ids,
    1 / num_streams for every codec id."""
    if kind not in VOCAB_WEIGHTS:
        raise CheckpointError(f"vocab_weight must be one of {VOCAB_WEIGHTS}, got {kind!r}")
    values = np.ones(vocab.size, np.float32)
    if kind == "recipe":
        values[vocab.audio_offset :] = np.float32(1.0 / vocab.num_streams)
    return values


def vocab_weight_spec(vocab: Vocab) -> TensorSpec:
    return TensorSpec(VOCAB_WEIGHT, (vocab.size,), np.dtype(np.float32))


def espnet_plan(
    cfg: ModelConfig, codec: XCodecConfig, tower: AudioEncoderConfig, dtype=DEFAULT_DTYPE
) -> list[TensorSpec]:
    """Every tensor of the ``.pt`` an export writes for these configs, in order, from the
    configs alone (1,382 at 8B with the shipped codec and tower)."""
    return reference_plan(cfg, codec, tower, np.dtype(dtype)) + [vocab_weight_spec(Vocab.from_config(cfg))]


def read_vocab_weight(reader: TensorReader, vocab: Vocab) -> str | None:
    """Which :data:`VOCAB_WEIGHTS` the file of ``reader`` carries (None: it has no
    ``vocab_weight``); ``CheckpointError`` for a wrong shape, dtype or values."""
    if VOCAB_WEIGHT not in reader:
        return None
    values = reader.view(VOCAB_WEIGHT)
    where = f"{VOCAB_WEIGHT!r} in {reader.path}"
    if values.shape != (vocab.size,):
        raise CheckpointError(
            f"{where} has shape {tuple(values.shape)}; the vocabulary of the config has {vocab.size} ids"
        )
    if values.dtype != np.float32:
        raise CheckpointError(f"{where} is {values.dtype}; the reference stores it as float32")
    for kind in VOCAB_WEIGHTS:
        if np.array_equal(values, vocab_weight_values(kind, vocab)):
            return kind
    ranges = (
        ("special", 0, vocab.text_offset),
        ("text", vocab.text_offset, vocab.audio_offset),
        ("codec", vocab.audio_offset, vocab.size),
    )
    summary = "; ".join(f"{name} ids [{a}, {b}): {_describe(values[a:b])}" for name, a, b in ranges)
    raise CheckpointError(
        f"{where} is neither all ones nor the recipe's weights (1 for special and text ids, "
        f"1/{vocab.num_streams} for codec ids): {summary}"
    )


def _describe(values: np.ndarray) -> str:
    """Distinct values with their counts (at most 3), else their number and range."""
    distinct, counts = np.unique(values, return_counts=True)
    if len(distinct) <= 3:
        return ", ".join(f"{v:g} ×{n}" for v, n in zip(distinct, counts))
    return f"{len(distinct)} distinct values in [{distinct[0]:g}, {distinct[-1]:g}], mean {values.mean():g}"


def write_espnet(
    source: ParamsSource,
    out: str | Path,
    dtype: str = DEFAULT_DTYPE,
    container: str = "plain",
    vocab_weight: str | None = None,
    progress: Callable[[int], None] = lambda nbytes: None,
) -> Path:
    """A checkpoint -> an ESPnet-native ``.pt``: the reference layout's tensors in ``dtype``
    plus ``vocab_weight`` (``vocab_weight``, else the one the checkpoint came with, else the
    recipe's), as the plain state dict or (``container="deepspeed"``) ``{"module": ...}``."""
    if container not in CONTAINERS:
        raise CheckpointError(f"container must be one of {CONTAINERS}, got {container!r}")
    out = Path(out)
    if out.is_dir():
        raise CheckpointError(f"--format espnet writes one .pt file; {out} is a directory")
    require_frozen_modules(source, "the reference's strict loader")
    specs, tensors = reference_tensors(source, np.dtype(dtype))
    vocab = Vocab.from_config(source.config.model)
    kind = vocab_weight or source.meta.get(VOCAB_WEIGHT) or "recipe"
    specs.append(vocab_weight_spec(vocab))
    tensors = itertools.chain(tensors, [(VOCAB_WEIGHT, vocab_weight_values(kind, vocab))])
    wrap = DEEPSPEED_KEY if container == "deepspeed" else None
    return write_torch_file(out, specs, tensors, wrap, progress)
