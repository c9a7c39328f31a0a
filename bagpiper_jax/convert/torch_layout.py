"""The reference PyTorch layout of a Bagpiper checkpoint (docs/checkpoints.md), both ways, streaming.

Keys (shapes at 8B): a ``Qwen3ForCausalLM`` state dict with the extended vocabulary —
``model.embed_tokens.weight [160392, 4096]``, ``lm_head.weight [160392, 4096]``,
``model.layers.{i}.*``, ``model.norm.weight`` — plus ``stream_emb.weight [8, 4096]``,
``adaptor.continuous_audio.{weight [4096, 2048], bias [4096]}`` (torch ``Linear``),
``multimodal_io_dict.discrete_audio.codec_model.*`` (``XcodecModel`` keys) and
``multimodal_io_dict.continuous_audio.model.audio_tower.*`` (audio tower keys).
A *plain HF* export (``text_only``) has the backbone with just the text rows of the
vocabulary tables, loadable by ``transformers.AutoModelForCausalLM``.

Export yields one tensor at a time from one param at a time; import reads memory-mapped
tensors shard by shard (``checkpoint.layout.read_entries``), one param at a time as it is
written (``lazy_save``). Layout changes are transposes and
reshapes only, so torch -> ours -> torch is bit-exact.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
from flax import nnx
from jax.sharding import Mesh

from bagpiper_jax.audio_encoder.config import AudioEncoderConfig
from bagpiper_jax.checkpoint.errors import CheckpointError
from bagpiper_jax.checkpoint.frozen_modules import load_codec_config, load_tower_config
from bagpiper_jax.checkpoint.hf_qwen3 import backbone_entries
from bagpiper_jax.checkpoint.layout import Entry, Layout, fill_state, read_entries
from bagpiper_jax.checkpoint.model_checkpoint import ParamsSource
from bagpiper_jax.checkpoint.params_dir import load_params
from bagpiper_jax.checkpoint.safetensors_writer import TensorSpec
from bagpiper_jax.checkpoint.tensor_reader import TensorReader
from bagpiper_jax.codec.config import XCodecConfig
from bagpiper_jax.codec.params import abstract_model as abstract_codec
from bagpiper_jax.codec.params import variable_names
from bagpiper_jax.config import ModelConfig, RuntimeConfig
from bagpiper_jax.convert.hf_audio_encoder import hf_shapes, iter_hf_tensors, params_from_reader
from bagpiper_jax.convert.hf_xcodec import PREFIX as CODEC_PREFIX
from bagpiper_jax.convert.hf_xcodec import hf_key, params_from_hf_state
from bagpiper_jax.model.create import abstract_model
from bagpiper_jax.sharding import Rules, state_shardings
from bagpiper_jax.vocab import Vocab

ENCODER_PREFIX = "multimodal_io_dict.continuous_audio.model.audio_tower."
EMBED = Entry("model.embed_tokens.weight", "embed", Layout("model.embed_tokens.weight"))
LM_HEAD = Entry("lm_head.weight", "lm_head", Layout("lm_head.weight", (1, 0)))
BAGPIPER_ONLY = [
    Entry(layout.key, path, layout)
    for path, layout in {
        "stream_emb": Layout("stream_emb.weight"),
        "adaptor_kernel": Layout("adaptor.continuous_audio.weight", (1, 0)),
        "adaptor_bias": Layout("adaptor.continuous_audio.bias"),
    }.items()
]

Tensors = Iterator[tuple[str, np.ndarray]]
Shapes = dict[str, tuple[tuple[int, ...], np.dtype]]  # our dotted param path -> (shape, dtype)


def model_entries(cfg: ModelConfig, text_only: bool = False) -> list[Entry]:
    """Every transformer tensor of the reference layout, grouped by our param (one param is
    restored at a time on export). ``text_only``: the plain HF Qwen3 backbone."""
    if not text_only:
        return [EMBED, LM_HEAD, *BAGPIPER_ONLY, *backbone_entries(cfg)]
    vocab = Vocab.from_config(cfg)
    rows = slice(vocab.text_offset, vocab.text_offset + vocab.text_size)
    return [Entry(e.key, e.path, e.layout, rows=rows) for e in (EMBED, LM_HEAD)] + backbone_entries(cfg)


def model_param_shapes(cfg: ModelConfig, runtime: RuntimeConfig = RuntimeConfig()) -> Shapes:
    """Our transformer params (dotted path -> (shape, dtype in ``runtime.param_dtype``)),
    from the config alone (nothing allocated)."""
    return {
        ".".join(map(str, path)): (tuple(v.shape), np.dtype(v.dtype))
        for path, v in nnx.to_flat_state(abstract_model(cfg, runtime)[1])
    }


def model_specs(entries: list[Entry], shapes: Shapes, dtype=None) -> list[TensorSpec]:
    """Plan of the transformer tensors of ``entries`` (output ``dtype``; None: as in ``shapes``)."""
    return [TensorSpec(e.key, e.torch_shape(shapes[e.path][0]), np.dtype(dtype or shapes[e.path][1])) for e in entries]


def model_tensors(
    entries: list[Entry], shapes: Shapes, read_param: Callable[[str], np.ndarray], dtype=None
) -> tuple[list[TensorSpec], Tensors]:
    """Plan and lazy stream of the transformer tensors.

    Args:
      entries: from :func:`model_entries`.
      shapes: our dotted param path -> (shape, stored dtype).
      read_param: our whole param (e.g. ``[layers, hidden, mlp]``) as a host array; called
        once per param, in entry order, so only one param is in memory at a time.
      dtype: output dtype (None: as stored).
    """

    def stream() -> Tensors:
        path, leaf = None, None
        for e in entries:
            if e.path != path:
                path, leaf = e.path, None  # drop the previous param before reading the next
                leaf = read_param(path)
            yield e.key, e.to_torch(leaf)  # a view: the writer casts and copies it block by block

    return model_specs(entries, shapes, dtype), stream()


def codec_specs(cfg: XCodecConfig, dtype=None) -> list[TensorSpec]:
    """Plan of ``multimodal_io_dict.discrete_audio.codec_model.*`` from the codec's config."""
    return [
        TensorSpec(CODEC_PREFIX + hf_key(name), tuple(v.shape), np.dtype(dtype or v.dtype))
        for name, v in variable_names(abstract_codec(cfg)).items()
    ]


def codec_tensors(directory: str | Path, dtype=None) -> tuple[list[TensorSpec], Tensors]:
    """Plan and stream of the codec of a params directory (its params are loaded when the
    stream starts and dropped when it ends)."""
    cfg = load_codec_config(directory)
    specs = codec_specs(cfg, dtype)

    def stream() -> Tensors:
        params = load_params(directory)
        for spec, name in zip(specs, variable_names(abstract_codec(cfg))):
            yield spec.name, np.asarray(params[name])

    return specs, stream()


def encoder_specs(config: AudioEncoderConfig, dtype=np.float32) -> list[TensorSpec]:
    """Plan of ``multimodal_io_dict.continuous_audio.model.audio_tower.*`` from the tower's config."""
    return [TensorSpec(name, shape, np.dtype(dtype)) for name, shape in hf_shapes(config, ENCODER_PREFIX)]


def encoder_tensors(directory: str | Path, dtype=None) -> tuple[list[TensorSpec], Tensors]:
    """Plan and stream of the audio tower of a params directory (loaded when the stream
    starts; stored float32, the output dtype unless ``dtype``)."""
    config = load_tower_config(directory)
    dtype = np.dtype(dtype or np.float32)

    def stream() -> Tensors:
        yield from iter_hf_tensors(config, load_params(directory), ENCODER_PREFIX, dtype)

    return encoder_specs(config, dtype), stream()


def reference_plan(
    cfg: ModelConfig, codec: XCodecConfig | None, tower: AudioEncoderConfig | None, dtype=np.float32
) -> list[TensorSpec]:
    """Every tensor of the reference layout (in the order an export writes them) from the
    configs alone: the codec's (if any), the tower's (if any), then the transformer's."""
    specs = codec_specs(codec, dtype) if codec is not None else []
    specs += encoder_specs(tower, dtype) if tower is not None else []
    return specs + model_specs(model_entries(cfg), model_param_shapes(cfg), dtype)


def reference_tensors(source: ParamsSource, dtype=None, text_only: bool = False) -> tuple[list[TensorSpec], Tensors]:
    """Plan and stream of a checkpoint's tensors in the reference layout (``text_only``: the
    plain HF Qwen3 backbone): the frozen modules first, each freed before the next part
    streams, then the transformer one param at a time."""
    parts = []
    if not text_only and source.codec_dir:
        parts.append(codec_tensors(source.codec_dir, dtype))
    if not text_only and source.encoder_dir:
        parts.append(encoder_tensors(source.encoder_dir, dtype))
    parts.append(model_tensors(model_entries(source.config.model, text_only), source.params, source.read, dtype))
    specs = [spec for part_specs, _ in parts for spec in part_specs]
    return specs, itertools.chain.from_iterable(stream for _, stream in parts)


def require_frozen_modules(source: ParamsSource, reader: str) -> None:
    """``CheckpointError`` unless the checkpoint has its codec and audio tower (the
    reference's model holds both, so ``reader`` needs them)."""
    missing = [
        f"the {what} ({field})"
        for what, field, directory in (
            ("codec", "assets.codec", source.codec_dir),
            ("audio tower", "assets.audio_encoder", source.encoder_dir),
        )
        if directory is None
    ]
    if missing:
        raise CheckpointError(
            f"{source.path} has no {' and no '.join(missing)}, which {reader} needs: convert with a "
            f"config naming them (a model checkpoint stores them beside its params; a run reads them "
            f"from its config)"
        )


def read_model(
    reader: TensorReader,
    cfg: ModelConfig,
    runtime: RuntimeConfig,
    mesh: Mesh,
    rules: Rules,
    progress: Callable[[int], None] = lambda n: None,
    lazy: bool = False,
):
    """Our transformer params from reference-layout tensors, sharded on ``mesh``.

    Returns ``(graphdef, state, shardings)`` like :func:`bagpiper_jax.model.init_model`;
    a missing or mis-shaped tensor raises ``CheckpointError`` naming its key (before any
    is read). ``lazy``: the params are ``LazyArray`` s, each read when ``lazy_save`` writes it.
    """
    graphdef, abstract = abstract_model(cfg, runtime, rules)
    shardings = state_shardings(abstract, mesh, rules)
    params = read_entries(reader, model_entries(cfg), abstract, shardings, progress, lazy)
    return graphdef, fill_state(cfg, runtime, rules, mesh, shardings, params), shardings


def has_prefix(reader: TensorReader, prefix: str) -> bool:
    return any(k.startswith(prefix) for k in reader.keys())


def check_no_unknown(reader: TensorReader, cfg: ModelConfig, allowed: tuple[str, ...] = ()) -> None:
    """Raises ``CheckpointError`` listing tensors that have no place in the reference layout
    (nor in ``allowed``)."""
    known = {e.key for e in model_entries(cfg)} | set(allowed)
    unknown = [k for k in reader.keys() if k not in known and not k.startswith((CODEC_PREFIX, ENCODER_PREFIX))]
    if unknown:
        raise CheckpointError(
            f"{reader.path} holds {len(unknown)} tensor(s) with no place in the Bagpiper "
            f"reference layout of this config: {unknown[:5]}"
        )


def read_codec(path, config: XCodecConfig) -> dict[str, np.ndarray]:
    """Codec params (flat, our names) from the ``...codec_model.*`` tensors under ``path``."""
    reader = TensorReader(path, strip_prefixes=(CODEC_PREFIX,), only_prefixes=(CODEC_PREFIX,))
    return params_from_hf_state(config, _LazyTensors(reader))


def read_encoder(path, config: AudioEncoderConfig) -> dict:
    """Audio tower params (nested dict, float32) from the ``...audio_tower.*`` tensors under ``path``."""
    reader = TensorReader(path, strip_prefixes=(ENCODER_PREFIX,), only_prefixes=(ENCODER_PREFIX,))
    return params_from_reader(config, reader, ENCODER_PREFIX)


class _LazyTensors(Mapping):
    """The tensors of a :class:`TensorReader` as a mapping (memory-mapped when looked up)."""

    def __init__(self, reader: TensorReader):
        self._reader = reader

    def __getitem__(self, key: str) -> np.ndarray:
        return self._reader.view(key)

    def __contains__(self, key) -> bool:
        return key in self._reader

    def __iter__(self):
        return iter(self._reader.keys())

    def __len__(self) -> int:
        return len(self._reader.keys())
