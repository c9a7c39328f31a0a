"""Typed run configuration, loaded from YAML with dotted ``key=value`` overrides.

Every section is a frozen dataclass. Loading is strict: an unknown key or a value of
the wrong type raises :class:`ConfigError` naming the full dotted key, so a typo in a
launch script fails at start-up instead of silently training the wrong model.

    cfg = load_config("configs/tiny.yaml", ["model.layers=4", "mesh.fsdp=2"])
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from bagpiper_jax.errors import BagpiperError

log = logging.getLogger(__name__)


class ConfigError(BagpiperError):
    """A configuration file or override is malformed; the message names the key."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of the multi-stream Bagpiper transformer (Qwen3 backbone): every field
    changes the model's parameters or what they compute. Defaults: Bagpiper-8B.

    How the model runs (dtypes, remat, attention kernel) is :class:`RuntimeConfig`; the
    files it reads (tokenizer, codec, audio tower) are :class:`AssetsConfig`.
    """

    # Vocabulary layout (see bagpiper_jax.vocab): specials, text, then audio streams.
    num_special: int = 256
    text_vocab_size: int = 151_936
    num_streams: int = 8
    codebook_size: int = 1024
    # Qwen3 backbone.
    hidden: int = 4096
    layers: int = 36
    heads: int = 32
    kv_heads: int = 8
    head_dim: int = 128
    mlp: int = 12_288
    rms_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    # Continuous audio input: encoder output width feeding the adaptor.
    continuous_dim: int = 2048
    init_std: float = 0.02  # N(0, init_std) for new parameters (and the extended vocabulary rows)

    def __post_init__(self):
        _check_positive(
            "model",
            self,
            (
                "text_vocab_size",
                "num_streams",
                "codebook_size",
                "hidden",
                "layers",
                "heads",
                "kv_heads",
                "head_dim",
                "mlp",
                "continuous_dim",
            ),
        )
        if self.num_special < 12:
            raise ConfigError(f"model.num_special must be >= 12 (named specials), got {self.num_special}")
        if self.heads % self.kv_heads:
            raise ConfigError(f"model.heads ({self.heads}) must be a multiple of model.kv_heads ({self.kv_heads})")
        if self.head_dim % 2:
            raise ConfigError(f"model.head_dim must be even for RoPE, got {self.head_dim}")


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """How the model runs: numerics, memory and kernels. None of it is stored in the
    parameters, so it may change between runs of the same checkpoint."""

    dtype: str = "bfloat16"  # compute dtype of activations and matmuls
    param_dtype: str = "float32"  # master weights
    encoder_dtype: str = "bfloat16"  # the frozen audio tower's compute dtype
    remat: str = "dots"  # none | dots | dots_attention | qkv_attention | full (model/decoder.py)
    scan_layers: bool = True  # one lax.scan over the layers; false: unrolled (compile time grows with depth)
    attention: str = "xla"  # xla | cudnn | pallas_gpu | splash (see model.attention_kernels)
    # Pallas attention tiles (frames). splash (TPU): multiples of 128, also used by the
    # backward kernels; pallas_gpu: forward tiles, then one tile size for the backward pass.
    splash_block_q: int = 512
    splash_block_kv: int = 512
    splash_block_kv_compute: int = 512
    splash_fused_bwd: bool = False  # one fused dq/dkv backward kernel instead of two
    gpu_block_q: int = 128
    gpu_block_kv: int = 128
    gpu_block_bwd: int = 32
    loss_chunk: int = 1024  # frames per stream-0 cross-entropy chunk
    max_frames: int = 32_768  # longest sequence (packed row, or prompt + generation) accepted

    def __post_init__(self):
        _check_choice("runtime.remat", self.remat, ("none", "dots", "dots_attention", "qkv_attention", "full"))
        _check_choice("runtime.attention", self.attention, ("xla", "cudnn", "pallas_gpu", "splash"))
        for name in ("dtype", "param_dtype", "encoder_dtype"):
            _check_choice(f"runtime.{name}", getattr(self, name), ("float32", "bfloat16"))
        _check_positive(
            "runtime",
            self,
            (
                "max_frames",
                "loss_chunk",
                "splash_block_q",
                "splash_block_kv",
                "splash_block_kv_compute",
                "gpu_block_q",
                "gpu_block_kv",
                "gpu_block_bwd",
            ),
        )
        for name in ("splash_block_q", "splash_block_kv", "splash_block_kv_compute"):
            if getattr(self, name) % 128:
                raise ConfigError(f"runtime.{name} must be a multiple of 128 (TPU lanes), got {getattr(self, name)}")
        if self.splash_block_kv % self.splash_block_kv_compute:
            raise ConfigError(
                f"runtime.splash_block_kv ({self.splash_block_kv}) must be a multiple of "
                f"runtime.splash_block_kv_compute ({self.splash_block_kv_compute})"
            )


@dataclasses.dataclass(frozen=True)
class AssetsConfig:
    """Files a run reads besides its data and checkpoints ("" = none)."""

    tokenizer: str = ""  # tokenizer.json, or a directory holding one (Qwen3's for real runs)
    codec: str = ""  # XCodec params directory (bagpiper-convert hf-xcodec)
    audio_encoder: str = ""  # frozen audio tower params directory (bagpiper-convert hf-audio-encoder)
    clap: str = ""  # HF ClapModel directory: CLAP score and Fréchet distance of generated audio (evaluation)
    asr: str = ""  # HF speech-recognition model directory: WER of generated speech (evaluation)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh axis sizes (-1 = all remaining devices) and logical-axis rules.

    ``rules`` maps each logical axis name used by parameters and activations to a mesh
    axis, a list of mesh axes, or null (replicated). Logical names absent from the table
    are replicated.
    """

    data: int = 1
    fsdp: int = -1
    tensor: int = 1
    rules: tuple[tuple[str, Any], ...] = (
        # Activations.
        ("activation_batch", ("data", "fsdp")),
        ("activation_length", None),
        ("activation_embed", None),
        ("activation_heads", "tensor"),
        ("activation_kv_heads", "tensor"),
        ("activation_mlp", "tensor"),
        ("activation_vocab", "tensor"),
        # Parameters.
        ("layers", None),
        ("vocab", "tensor"),
        ("embed", "fsdp"),
        ("q_heads", "tensor"),
        ("kv_heads", "tensor"),
        ("head_dim", None),
        ("mlp", "tensor"),
        ("norm", None),
        ("streams", None),
        ("continuous", None),
    )

    @property
    def axis_names(self) -> tuple[str, ...]:
        return ("data", "fsdp", "tensor")

    @property
    def axis_sizes(self) -> tuple[int, ...]:
        return (self.data, self.fsdp, self.tensor)

    def __post_init__(self):
        sizes = self.axis_sizes
        if sum(s == -1 for s in sizes) > 1:
            raise ConfigError(f"at most one mesh axis may be -1, got {dict(zip(self.axis_names, sizes))}")
        for name, size in zip(self.axis_names, sizes):
            if size == 0 or size < -1:
                raise ConfigError(f"mesh.{name} must be positive or -1, got {size}")
        seen = set()
        for i, rule in enumerate(self.rules):
            if len(rule) != 2 or not isinstance(rule[0], str):
                raise ConfigError(f"mesh.rules[{i}] must be [logical_name, mesh_axes], got {rule!r}")
            if rule[0] in seen:
                raise ConfigError(f"mesh.rules names logical axis {rule[0]!r} twice")
            seen.add(rule[0])
            targets = rule[1] if isinstance(rule[1], (tuple, list)) else (rule[1],)
            for t in targets:
                if t is not None and t not in self.axis_names:
                    raise ConfigError(
                        f"mesh.rules[{i}] ({rule[0]!r}) maps to unknown mesh axis {t!r}; "
                        f"mesh axes are {self.axis_names}"
                    )


@dataclasses.dataclass(frozen=True)
class SourceConfig:
    """One source of a training mixture: a prepared directory drawn with ``weight``."""

    name: str = ""
    prepared: str = ""  # bagpiper-prepare --out
    weight: float = 1.0  # relative share of the source's examples in the mixture
    eval_prepared: str = ""  # held-out prepared directory ("" = the first batches of `prepared`)

    def __post_init__(self):
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"data.sources: name must be a non-empty word ([A-Za-z0-9_-]), got {self.name!r}")
        if not self.prepared:
            raise ConfigError(f"data.sources[{self.name}].prepared must name a prepared directory")
        if not self.weight > 0:
            raise ConfigError(f"data.sources[{self.name}].weight must be positive, got {self.weight}")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Prepared corpus and the Grain training input (docs/data.md)."""

    prepared: str = ""  # directory of ArrayRecord shards + index.json (bagpiper-prepare --out)
    eval_prepared: str = ""  # held-out prepared directory for eval ("" = the first batches of `prepared`)
    # A weighted mixture of prepared directories instead of `prepared` (docs/data.md, Mixtures).
    sources: tuple[SourceConfig, ...] = ()
    demo: bool = False  # build the embedded demo corpus (and its assets) into these paths when missing
    demo_examples: int = 2000  # the demo corpus's training examples (400 were learnt by heart in 300 steps)
    demo_heldout: int = 40  # and its held-out ones
    row_frames: int = 8192  # frames per packed row
    batch_rows: int = 8  # packed rows per global batch
    input_shards: int = 0  # logical input pipelines (0 = one per process); fixes the data order
    max_pieces_per_row: int = 64  # continuous-audio pieces (<= piece_frames mel frames each) per row
    mel_frames_per_row: int = 32768  # log-mel frames per row (pieces back to back, unpadded; >= longest clip)
    piece_frames: int = 800  # mel frames per encoder attention window (n_window_infer)
    loss_region: str = "assistant"  # assistant | all
    guidance_drop: float = 0.05  # classifier-free-guidance dropout probability (training only)
    # Under guidance dropout the other assistant audio messages keep their codes (weight 0), as
    # in the reference; false zeroes them with the rest of the example.
    guidance_keep_other_audio: bool = True
    # Text token 0 (Qwen3's "!") becomes the pad id 0 with its loss weight kept: its target is
    # ignored but counts in the loss denominator, as in the reference the released weights were
    # trained with. False: an ordinary text id (num_special + 0), e.g. for training from scratch.
    text_token0_as_pad: bool = True
    overlong: str = "skip"  # skip | truncate (text-only examples longer than a row)
    packing_bins: int = 64
    shuffle_seed: int = 0
    workers: int = 0  # Grain worker processes (0 = in the main process)
    read_threads: int = 0  # reader threads per process (0 = inline: best for local shards; raise for remote)
    prefetch_buffer: int = 2
    examples_per_shard: int = 512  # bagpiper-prepare: records per shard
    manifest_chunk_bytes: int = 64 << 20  # bagpiper-prepare: manifest bytes per work unit
    max_audio_seconds: float = 300.0

    def __post_init__(self):
        _check_choice("data.loss_region", self.loss_region, ("assistant", "all"))
        _check_choice("data.overlong", self.overlong, ("skip", "truncate"))
        if not 0.0 <= self.guidance_drop <= 1.0:
            raise ConfigError(f"data.guidance_drop must lie in [0, 1], got {self.guidance_drop}")
        if self.read_threads < 0:
            raise ConfigError(f"data.read_threads must be >= 0, got {self.read_threads}")
        if self.input_shards < 0:
            raise ConfigError(f"data.input_shards must be >= 0, got {self.input_shards}")
        _check_positive(
            "data",
            self,
            (
                "row_frames",
                "batch_rows",
                "max_pieces_per_row",
                "mel_frames_per_row",
                "piece_frames",
                "packing_bins",
                "examples_per_shard",
                "manifest_chunk_bytes",
                "demo_examples",
                "demo_heldout",
            ),
        )
        if self.sources and (self.prepared or self.eval_prepared):
            raise ConfigError("give data.sources or data.prepared / data.eval_prepared, not both")
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ConfigError(f"data.sources names must be unique, got {names}")

    @property
    def mixture(self) -> tuple[SourceConfig, ...]:
        """The sources drawn from: ``sources``, or ``prepared`` as the one source "main"."""
        if self.sources:
            return self.sources
        return (SourceConfig("main", self.prepared, 1.0, self.eval_prepared),) if self.prepared else ()


@dataclasses.dataclass(frozen=True)
class EvalTaskConfig:
    """An eval manifest scored during training (docs/evaluation.md)."""

    manifest: str = ""  # eval manifest JSONL (bagpiper-eval's --eval)
    samples: int = 0  # items from the start of the manifest (0 = all)
    name: str = ""  # metrics prefix eval/<name>/... ("" = the manifest's file stem)

    def __post_init__(self):
        if not self.manifest:
            raise ConfigError("train.eval_tasks: each task needs a manifest")
        if self.samples < 0:
            raise ConfigError(f"train.eval_tasks[{self.manifest}].samples must be >= 0, got {self.samples}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation, checkpointing and logging (docs/training.md)."""

    steps: int = 600_000
    lr: float = 1e-4
    warmup_steps: int = 5000
    decay_steps: int = 600_000  # cosine from lr down to final_lr_ratio * lr at this step
    final_lr_ratio: float = 0.3
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 3e-7
    clip_norm: float = 1.0
    grad_accum: int = 1  # micro-batches per step (data.batch_rows must divide)
    # Param-path globs of the params that train (docs/training.md, Frozen parameters); the
    # others get no gradient, no optimizer state and no update. Default: every param.
    trainable: tuple[str, ...] = ("*",)
    # Params to start from when the run has no checkpoint: an HF Qwen3 directory, a model
    # checkpoint, or a run directory (or one of its steps) of an earlier stage.
    init_from: str = ""
    # With init_from a run: continue its data iterator (same data.* settings) instead of
    # starting the data anew.
    continue_data: bool = False
    checkpoint_every: int = 1000
    checkpoint_dir: str = ""  # "" = <run_dir>/checkpoints; may be a gs:// URL (Orbax writes it directly)
    keep_checkpoints: int = 3
    log_every: int = 10
    eval_every: int = 1000
    eval_batches: int = 4
    eval_tasks: tuple[EvalTaskConfig, ...] = ()  # eval manifests generated and scored every eval_every steps
    peak_flops: float = 989e12  # per device, for MFU (H100/H200 bf16 dense)
    # A step with a non-finite loss or gradient is skipped; this many in a row stop the run.
    max_bad_steps: int = 10
    profile_steps: tuple[int, ...] = ()  # [first, last]: a jax.profiler trace of these steps

    def __post_init__(self):
        _check_positive(
            "train",
            self,
            ("steps", "grad_accum", "checkpoint_every", "keep_checkpoints", "log_every", "eval_every", "max_bad_steps"),
        )
        if not self.trainable or not all(self.trainable):
            raise ConfigError(f"train.trainable must list non-empty param-path patterns, got {list(self.trainable)}")
        if self.profile_steps and not (
            len(self.profile_steps) == 2 and 1 <= self.profile_steps[0] <= self.profile_steps[1]
        ):
            raise ConfigError(
                f"train.profile_steps must be [first, last] with 1 <= first <= last, got {list(self.profile_steps)}"
            )
        if self.decay_steps <= self.warmup_steps:
            raise ConfigError(
                f"train.decay_steps ({self.decay_steps}) must exceed train.warmup_steps ({self.warmup_steps})"
            )


@dataclasses.dataclass(frozen=True)
class SegmentDecoding:
    """How the segments of one modality decode (the reference's per-modality inference
    settings; docs/generation.md). Defaults: the recipe's text settings.

    Steps count a segment's frames after its modality token, delay-interleaved frames for
    audio (``n`` codec frames take ``n + num_streams - 1``), its END frame included.
    """

    temperature: float = 0.6  # 0 = greedy (argmax)
    top_k: int = 20  # sample among the top_k allowed ids of each stream (0 = all)
    guidance_scale: float = 1.0  # classifier-free guidance s * cond + (1 - s) * uncond; 1 = none
    min_step: int = 1  # the END tokens are allowed from this step on
    max_step: int = 8192  # steps a segment may take; one that reaches it is cut without END


@dataclasses.dataclass(frozen=True)
class AudioDecoding(SegmentDecoding):
    """:class:`SegmentDecoding` of audio segments. Defaults: the recipe's audio settings."""

    temperature: float = 0.8
    guidance_scale: float = 3.0
    min_step: int = 50
    max_step: int = 2048


@dataclasses.dataclass(frozen=True)
class GenerateConfig:
    """Decoding settings (docs/generation.md); ``bagpiper-generate`` reads them like any key
    (``generate.audio.temperature=0.9``).

    The defaults are the reference's rules and recipe values. The switches restore this
    library's earlier, stricter rules, each on its own.
    """

    text: SegmentDecoding = dataclasses.field(default_factory=SegmentDecoding)
    audio: AudioDecoding = dataclasses.field(default_factory=AudioDecoding)
    max_segments: int = 4  # assistant segments per answer at most (beyond a longer enforced list)
    max_new_frames: int = 1536  # KV-cache room after the prompt; rows that fill it are truncated
    samples: int = 1  # samples per prompt
    seed: int = 0
    # Each audio stream follows the delay pattern (its pad for the first n steps and after its
    # codes; stream 0's pad ends the codes) and the END frame comes right after the block.
    strict_delay_pattern: bool = False
    # <|eot|> only where another segment follows (by the enforced list, else before the last
    # of max_segments), <|eos|> only where the answer ends.
    planned_end_tokens: bool = False
    end_at_max_step: bool = False  # a segment reaching max_step ends with an END token, not cut
    # Unconditional (guidance) row: "reference" = pad for everything before the guided
    # segment, <|assistant|> included; "audio_segments" = a pad prompt ending in <|assistant|>
    # that then sees the frames of every audio segment.
    unconditional_row: str = "reference"

    def __post_init__(self):
        for modality in ("text", "audio"):
            segment = getattr(self, modality)
            for name in ("temperature", "top_k", "min_step"):
                if getattr(segment, name) < 0:
                    raise ConfigError(f"generate.{modality}.{name} must be >= 0, got {getattr(segment, name)}")
            _check_positive(f"generate.{modality}", segment, ("max_step",))
            if segment.guidance_scale < 1.0:
                raise ConfigError(f"generate.{modality}.guidance_scale must be >= 1, got {segment.guidance_scale}")
        _check_positive("generate", self, ("max_segments", "max_new_frames", "samples"))
        _check_choice("generate.unconditional_row", self.unconditional_row, ("reference", "audio_segments"))


@dataclasses.dataclass(frozen=True)
class Config:
    """A whole run."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)
    assets: AssetsConfig = dataclasses.field(default_factory=AssetsConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    generate: GenerateConfig = dataclasses.field(default_factory=GenerateConfig)
    run_dir: str = "runs/default"
    seed: int = 0


def check_model_matches(cfg: ModelConfig, stored: ModelConfig, source) -> None:
    """Raises ``ConfigError`` naming every architecture field in which ``cfg`` differs from
    the config ``stored`` with a checkpoint (``source``)."""
    wrong = [
        f"model.{f.name}={getattr(cfg, f.name)} but {source} has {getattr(stored, f.name)}"
        for f in dataclasses.fields(ModelConfig)
        if getattr(cfg, f.name) != getattr(stored, f.name)
    ]
    if wrong:
        raise ConfigError("config does not match the checkpoint: " + "; ".join(wrong))


def _check_choice(key: str, value: str, choices: tuple[str, ...]):
    if value not in choices:
        raise ConfigError(f"{key} must be one of {choices}, got {value!r}")


def _check_positive(section: str, cfg: Any, names: tuple[str, ...]):
    for name in names:
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"{section}.{name} must be positive, got {getattr(cfg, name)}")


# Keys that moved (old dotted key -> new one). Files and checkpoints written before the
# move still load: the old key is read as the new one (a warning says so for user files).
MOVED_KEYS = {
    **{
        f"model.{k}": f"runtime.{k}"
        for k in (
            "dtype",
            "param_dtype",
            "encoder_dtype",
            "remat",
            "attention",
            "splash_block_q",
            "splash_block_kv",
            "splash_block_kv_compute",
            "splash_fused_bwd",
            "gpu_block_q",
            "gpu_block_kv",
            "gpu_block_bwd",
            "loss_chunk",
            "max_frames",
        )
    },
    "model.audio_encoder": "assets.audio_encoder",
    "data.tokenizer": "assets.tokenizer",
    "data.codec": "assets.codec",
    "data.cfg_drop": "data.guidance_drop",
    # Per-modality decoding settings (generate.text / generate.audio). Audio steps count
    # interleaved frames, 7 more than the codec frames the old audio keys counted.
    "generate.audio_cfg_scale": "generate.audio.guidance_scale",
    "generate.audio_guidance_scale": "generate.audio.guidance_scale",
    **{
        f"generate.{modality}_{name}": f"generate.{modality}.{name}"
        for modality in ("text", "audio")
        for name in ("temperature", "top_k")
    },
    **{
        f"generate.{bound}_{modality}_frames": f"generate.{modality}.{bound}_step"
        for modality in ("text", "audio")
        for bound in ("min", "max")
    },
}


def migrate_moved_keys(data: dict, source: str = "config", warn: bool = True) -> dict:
    """``data`` (nested plain dict) with every key of :data:`MOVED_KEYS` moved to its new
    place; giving both the old and the new key is an error."""
    for old, new in MOVED_KEYS.items():
        *old_path, old_name = old.split(".")
        section = data
        for part in old_path:
            section = section.get(part) if isinstance(section, dict) else None
        if not isinstance(section, dict) or old_name not in section:
            continue
        *new_path, new_name = new.split(".")
        target = data
        for depth, part in enumerate(new_path):
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ConfigError(f"{source}: {'.'.join(new_path[: depth + 1])} must be a mapping")
        if new_name in target:
            raise ConfigError(f"{source}: both {old} (its old name) and {new} are given; keep {new}")
        target[new_name] = section.pop(old_name)
        if warn:
            log.warning("%s: config key %s is now %s", source, old, new)
    return data


def _convert(key: str, value: Any, hint: Any, lenient: bool) -> Any:
    """Checks ``value`` against the type ``hint`` (recursively); returns the typed value."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{key or '<root>'} must be a mapping, got {type(value).__name__}")
        return _from_dict(hint, value, key, lenient)
    if hint is Any:
        return _freeze(value)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _convert(key, value, option, lenient)
            except ConfigError:
                continue
        raise ConfigError(f"{key} has value {value!r}, which is not a {hint}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {type(value).__name__}")
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(f"{key}[{i}]", v, args[0], lenient) for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{key} must have {len(args)} entries, got {len(value)}")
        return tuple(_convert(f"{key}[{i}]", v, a, lenient) for i, (v, a) in enumerate(zip(value, args)))
    if hint is type(None):
        if value is not None:
            raise ConfigError(f"{key} must be null, got {value!r}")
        return None
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads "5e5" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint in (int, float, str, bool):
        if type(value) is not hint:
            raise ConfigError(f"{key} must be {hint.__name__}, got {type(value).__name__} {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported config type {hint}")


def _freeze(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _from_dict(cls: type, data: dict, prefix: str, lenient: bool) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in names:
            if lenient:
                continue
            raise ConfigError(f"unknown config key {key!r} (known: {', '.join(sorted(names))})")
        kwargs[k] = _convert(key, v, hints[k], lenient)
    return cls(**kwargs)


def from_dict(cls: type, data: dict, source: str = "", *, lenient: bool = False) -> Any:
    """A config dataclass ``cls`` (nested ones included) from plain data, type-checked.

    Strict by default: an unknown key raises :class:`ConfigError` naming it. ``lenient``
    ignores unknown keys, for foreign files such as an HF ``config.json`` that carry many
    fields this library does not model. Errors are prefixed with ``source``.
    """
    try:
        return _convert("", data, cls, lenient)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}" if source else str(e)) from e


def to_dict(cfg: Any) -> dict:
    """A plain (YAML/JSON-serialisable) dict of a config dataclass."""

    def plain(v):
        if dataclasses.is_dataclass(v):
            return to_dict(v)
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        return v

    return {f.name: plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def read_json_file(path: str | Path, what: str, error: type[Exception] = ConfigError) -> dict:
    """The JSON object stored in ``path`` (``what`` it should be, for the message); raises
    ``error`` naming the file when it is missing, not JSON or not an object."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path} not found: expected {what}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path} is not valid JSON ({what}): {e}") from e
    if not isinstance(data, dict):
        raise error(f"{path} must hold a JSON object ({what})")
    return data


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Applies ``a.b=c`` overrides to a nested dict; values are parsed as YAML."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.path=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key!r}: {part!r} is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def _merge(base: dict, update: dict) -> dict:
    """``base`` with ``update``'s values: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for k, v in update.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _read_config_file(path: Path, including: tuple[Path, ...] = ()) -> dict:
    """A YAML config file's data, with its ``base`` file's underneath (recursively): a file
    may start from another (``base: 8b_v5p256.yaml``, relative to its own directory) and
    give only the keys it changes."""
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist" + (f" (base of {including[-1]})" if including else ""))
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base must name a config file, got {base!r}")
    base_path = path.parent / base
    if base_path.resolve() in {p.resolve() for p in (*including, path)}:
        raise ConfigError(f"{path}: base {base} includes itself")
    return _merge(_read_config_file(base_path, (*including, path)), data)


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Loads a :class:`Config` from a YAML file (and the ``base`` files it names, see
    :func:`_read_config_file`; or defaults) plus dotted overrides."""
    data = _read_config_file(Path(path)) if path is not None else {}
    data = migrate_moved_keys(apply_overrides(data, list(overrides)), str(path or "overrides"))
    return from_dict(Config, data)


def config_from_dict(data: dict, source: str = "") -> Config:
    """A :class:`Config` from nested plain data (e.g. :func:`to_dict` output, or the config
    stored in a checkpoint, whose moved keys are migrated), strictly checked."""
    return from_dict(Config, migrate_moved_keys(copy.deepcopy(data), source, warn=False), source)
