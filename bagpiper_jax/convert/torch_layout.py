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

from collections.abc import Callable, Iterator, Mapping

import jax
import numpy as np
from jax.sharding import Mesh

from bagpiper_jax.audio_encoder.config import AudioEncoderConfig
from bagpiper_jax.checkpoint.errors import CheckpointError
from bagpiper_jax.checkpoint.hf_qwen3 import backbone_entries
from bagpiper_jax.checkpoint.layout import Entry, Layout, fill_state, read_entries
from bagpiper_jax.checkpoint.safetensors_writer import TensorSpec
from bagpiper_jax.checkpoint.tensor_reader import TensorReader
from bagpiper_jax.codec.config import XCodecConfig
from bagpiper_jax.config import ModelConfig, RuntimeConfig
from bagpiper_jax.convert.hf_audio_encoder import iter_hf_tensors, params_from_reader
from bagpiper_jax.convert.hf_xcodec import PREFIX as CODEC_PREFIX
from bagpiper_jax.convert.hf_xcodec import export_hf_state, params_from_hf_state
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


def model_entries(cfg: ModelConfig, text_only: bool = False) -> list[Entry]:
    """Every transformer tensor of the reference layout, grouped by our param (one param is
    restored at a time on export). ``text_only``: the plain HF Qwen3 backbone."""
    if not text_only:
        return [EMBED, LM_HEAD, *BAGPIPER_ONLY, *backbone_entries(cfg)]
    vocab = Vocab.from_config(cfg)
    rows = slice(vocab.text_offset, vocab.text_offset + vocab.text_size)
    return [Entry(e.key, e.path, e.layout, rows=rows) for e in (EMBED, LM_HEAD)] + backbone_entries(cfg)


def model_tensors(
    entries: list[Entry],
    shapes: dict[str, tuple[tuple[int, ...], np.dtype]],
    read_param: Callable[[str], np.ndarray],
    dtype=None,
) -> tuple[list[TensorSpec], Tensors]:
    """Plan and lazy stream of the transformer tensors.

    Args:
      entries: from :func:`model_entries`.
      shapes: our dotted param path -> (shape, stored dtype).
      read_param: our whole param (e.g. ``[layers, hidden, mlp]``) as a host array; called
        once per param, in entry order, so only one param is in memory at a time.
      dtype: output dtype (None: as stored).
    """
    specs = [TensorSpec(e.key, e.torch_shape(shapes[e.path][0]), np.dtype(dtype or shapes[e.path][1])) for e in entries]

    def stream() -> Tensors:
        path, leaf = None, None
        for e in entries:
            if e.path != path:
                path, leaf = e.path, None  # drop the previous param before reading the next
                leaf = read_param(path)
            yield e.key, e.to_torch(leaf)  # a view: the writer casts and copies it block by block

    return specs, stream()


def codec_tensors(params: dict, dtype=None) -> tuple[list[TensorSpec], Tensors]:
    """Plan and stream of the codec's ``multimodal_io_dict.discrete_audio.codec_model.*``."""
    state = export_hf_state({k: jax.device_get(v) for k, v in params.items()}, prefix=CODEC_PREFIX)
    specs = [TensorSpec(k, tuple(v.shape), np.dtype(dtype or v.dtype)) for k, v in state.items()]
    return specs, iter(state.items())


def encoder_tensors(config: AudioEncoderConfig, params: dict, dtype=None) -> tuple[list[TensorSpec], Tensors]:
    """Plan and stream of the audio tower's ``multimodal_io_dict.continuous_audio.model.audio_tower.*``
    (the plan comes from a first pass over the tower's tensors, produced one at a time)."""
    dtype = np.dtype(dtype or jax.tree.leaves(params)[0].dtype)
    specs = [TensorSpec(k, tuple(v.shape), dtype) for k, v in iter_hf_tensors(config, params, ENCODER_PREFIX, dtype)]
    return specs, iter_hf_tensors(config, params, ENCODER_PREFIX, dtype)


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


def check_no_unknown(reader: TensorReader, cfg: ModelConfig) -> None:
    """Raises ``CheckpointError`` listing tensors that have no place in the reference layout."""
    known = {e.key for e in model_entries(cfg)}
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
