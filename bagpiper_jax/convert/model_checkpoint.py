"""Model checkpoints (params only) and reading the params of any Bagpiper checkpoint.

A *model checkpoint* is what ``bagpiper-convert hf-qwen3`` / ``from-torch`` write and
``train.init_from`` accepts::

    CKPT/config.json            {"format": "bagpiper-model", "step": N, "source": ...} (params_io)
    CKPT/config_resolved.json   the resolved run config (``load_config`` reads it)
    CKPT/params/                Orbax: the transformer params, the ``params`` of a TrainState
    CKPT/codec/                 optional codec params directory (usable as ``data.codec``)
    CKPT/audio_encoder/         optional audio tower params directory (``model.audio_encoder``)

Restoring is Orbax's normal path with targets that carry the shardings of the *current*
mesh, so a checkpoint written on one mesh (e.g. fsdp=8) restores onto any other (data=2 x
fsdp=4, one device, ...). :class:`ParamsSource` reads single params of a model checkpoint
or of a training run's checkpoint (partial restore: no optimizer state, one param at a
time) for export.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx
from jax.sharding import Mesh

from bagpiper_jax.audio_encoder.checkpoint import load_config as load_encoder_config
from bagpiper_jax.audio_encoder.config import AudioEncoderConfig
from bagpiper_jax.codec.checkpoint import load_codec_config, save_codec
from bagpiper_jax.codec.config import XCodecConfig
from bagpiper_jax.config import Config, ConfigError, ModelConfig, config_from_dict, load_config, to_dict
from bagpiper_jax.convert.lazy_save import save_pytree
from bagpiper_jax.convert.tensor_reader import CheckpointError
from bagpiper_jax.model.create import abstract_model
from bagpiper_jax.params_io import load_params, save_params
from bagpiper_jax.sharding import Rules, state_shardings
from bagpiper_jax.train.state import with_shardings

FORMAT = "bagpiper-model"
RUN_CONFIG = "config_resolved.json"
# Model fields that a checkpoint's params depend on; a config to restore into must agree.
SHAPE_FIELDS = ("num_special", "text_vocab_size", "num_streams", "codebook_size", "hidden", "layers", "heads",
                "kv_heads", "head_dim", "mlp", "continuous_dim", "rms_eps", "rope_theta")


@dataclasses.dataclass
class AudioModules:
    """Frozen modules stored beside the transformer (each optional)."""

    codec: tuple[XCodecConfig, dict] | None = None  # (config, flat params)
    audio_encoder: tuple[AudioEncoderConfig, dict] | None = None  # (config, nested params)


def load_audio_modules(codec_dir: str | Path | None, encoder_dir: str | Path | None) -> AudioModules:
    """Reads converted codec / audio tower params directories (``None`` or "": absent)."""
    modules = AudioModules()
    if codec_dir:
        modules.codec = (load_codec_config(codec_dir), load_params(codec_dir))
    if encoder_dir:
        modules.audio_encoder = (load_encoder_config(encoder_dir), load_params(encoder_dir))
    return modules


def save_model_checkpoint(directory: str | Path, cfg: Config, params: nnx.State, modules: AudioModules,
                          source: str, step: int = 0) -> Path:
    """Writes a model checkpoint: ``params`` (the sharded transformer state; leaves may be
    ``lazy_save.LazyArray`` s, each built only when it is written), the resolved ``cfg``
    and the frozen modules present in ``modules``."""
    directory = Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    # The layout of StandardSave, written one param at a time (lazy_save).
    save_pytree(directory / "params", params)
    (directory / "config.json").write_text(json.dumps({"format": FORMAT, "step": step, "source": source}, indent=2))
    (directory / RUN_CONFIG).write_text(json.dumps(to_dict(cfg), indent=1))
    if modules.codec is not None:
        save_codec(directory / "codec", *modules.codec)
    if modules.audio_encoder is not None:
        config, tower = modules.audio_encoder
        save_params(directory / "audio_encoder", tower, config.to_dict())
    return directory


def is_model_checkpoint(directory: str | Path) -> bool:
    path = Path(directory) / "config.json"
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("format") == FORMAT
    except json.JSONDecodeError:
        return False


def check_model_matches(cfg: ModelConfig, stored: ModelConfig, source: str | Path) -> None:
    """Raises ``ConfigError`` naming every shape-relevant model field that differs."""
    wrong = [f"model.{k}={getattr(cfg, k)} but {source} has {getattr(stored, k)}"
             for k in SHAPE_FIELDS if getattr(cfg, k) != getattr(stored, k)]
    if wrong:
        raise ConfigError("config does not match the checkpoint: " + "; ".join(wrong))


def load_model_params(directory: str | Path, cfg: ModelConfig, mesh: Mesh, rules: Rules):
    """Restores a model checkpoint's transformer params onto ``mesh`` (any mesh: the targets
    carry its shardings). Returns ``(graphdef, state, shardings)`` like ``init_model``."""
    if not is_model_checkpoint(directory):
        raise CheckpointError(f"{directory} is not a model checkpoint ({Path(directory) / 'config.json'} "
                              f"lacks format {FORMAT!r})")
    check_model_matches(cfg, load_config(Path(directory) / RUN_CONFIG).model, directory)
    graphdef, abstract = abstract_model(cfg, rules)
    shardings = state_shardings(abstract, mesh, rules)
    return graphdef, load_params(directory, with_shardings(abstract, shardings)), shardings


def load_init_params(path: str | Path, cfg: Config, mesh: Mesh) -> nnx.State:
    """``train.init_from``: a model checkpoint, or an HF Qwen3 directory (extended as in
    DESIGN §2.2). Returns the params sharded on ``mesh``."""
    if is_model_checkpoint(path):
        return load_model_params(path, cfg.model, mesh, cfg.mesh.rules)[1]
    from bagpiper_jax.convert.hf_qwen3 import load_hf_qwen3
    return load_hf_qwen3(path, cfg.model, mesh, cfg.mesh.rules, cfg.seed)[1]


class ParamsSource:
    """The params of a model checkpoint, of a run directory (its latest or ``step``'s
    checkpoint, found under ``train.checkpoint_dir`` or ``<run_dir>/checkpoints``) or of one
    step of a run (``.../checkpoints/<step>``): read one param at a time onto the host
    (export) or all at once onto a mesh (:meth:`restore`).

    Attributes:
      config: the resolved config the params were made with.
      step: the checkpoint's step.
      params: dotted param path -> (shape, stored dtype).
      codec_dir / encoder_dir: frozen module params directories to export with it (None:
        absent): a model checkpoint's own, or those the run's config names.
    """

    def __init__(self, path: str | Path, step: int | None = None):
        path = Path(path).absolute()
        if is_model_checkpoint(path):
            if step is not None:
                raise CheckpointError(f"--step applies to run directories; {path} is a model checkpoint")
            self.step = json.loads((path / "config.json").read_text())["step"]
            self.config = load_config(path / RUN_CONFIG)
            self._item, self._prefix = path / "params", ()
            self.codec_dir = path / "codec" if (path / "codec").is_dir() else None
            self.encoder_dir = path / "audio_encoder" if (path / "audio_encoder").is_dir() else None
            self._read_metadata()
            return
        if (path / RUN_CONFIG).is_file():  # a run directory: its latest (or --step) checkpoint
            self.config = load_config(path / RUN_CONFIG)
            directory = epath.Path(self.config.train.checkpoint_dir or path / "checkpoints")
            self.step = self._run_step(directory, step)
            step_dir = directory / str(self.step)
        elif (path / "state").is_dir() and (path / "meta").is_dir():  # one step of a run
            if step is not None:
                raise CheckpointError(f"--step applies to run directories; {path} is one step of a run")
            meta = json.loads((path / "meta" / "metadata").read_text())
            self.config, self.step, step_dir = config_from_dict(meta["config"]), meta["step"], path
        else:
            raise CheckpointError(f"{path} is neither a model checkpoint (config.json with format {FORMAT!r}), "
                                  f"a run directory (holding {RUN_CONFIG}) nor one step of a run (state/, meta/)")
        self._item, self._prefix = step_dir / "state", ("params",)
        self.codec_dir = self._configured_dir(self.config.data.codec, "data.codec", path)
        self.encoder_dir = self._configured_dir(self.config.model.audio_encoder, "model.audio_encoder", path)
        self._read_metadata()

    def _read_metadata(self):
        with ocp.PyTreeCheckpointer() as ckptr:
            tree = ckptr.metadata(self._item).item_metadata.tree
        for key in self._prefix:
            tree = tree[key]
        self.params = {".".join(k.key for k in keys[:-1]): (tuple(meta.shape), np.dtype(meta.dtype))
                       for keys, meta in jax.tree_util.tree_flatten_with_path(tree)[0]}  # keys end in "value"

    @staticmethod
    def _run_step(directory: epath.Path, step: int | None) -> int:
        from bagpiper_jax.train.checkpoint import RunCheckpoints
        ckpts = RunCheckpoints(directory, keep=2**31 - 1, async_save=False)  # read only: deletes nothing
        try:
            steps = ckpts.manager.all_steps()
        finally:
            ckpts.close()
        if not steps:
            raise CheckpointError(f"{directory} holds no complete checkpoint")
        if step is None:
            return max(steps)
        if step not in steps:
            raise CheckpointError(f"{directory} has no step {step}; steps: {sorted(steps)}")
        return step

    def restore(self, cfg: ModelConfig, mesh: Mesh, rules: Rules) -> tuple[nnx.GraphDef, nnx.State]:
        """All the params at once, sharded on ``mesh`` by ``rules`` (partial restore: never
        the optimizer state); ``cfg`` must match the checkpoint's shapes."""
        check_model_matches(cfg, self.config.model, self._item)
        graphdef, abstract = abstract_model(cfg, rules)
        tree = with_shardings(abstract, state_shardings(abstract, mesh, rules))
        for key in reversed(self._prefix):
            tree = {key: tree}
        with ocp.PyTreeCheckpointer() as ckptr:
            restored = ckptr.restore(self._item, args=ocp.args.PyTreeRestore(
                item=tree, restore_args=ocp.checkpoint_utils.construct_restore_args(tree), partial_restore=True))
        for key in self._prefix:
            restored = restored[key]
        return graphdef, restored

    @staticmethod
    def _configured_dir(value: str, field: str, run_dir: Path) -> Path | None:
        if not value:
            return None
        if not Path(value).is_dir():
            raise CheckpointError(f"{field}={value!r} (config of {run_dir}) does not exist; run from the "
                                  f"directory the run was started in, or convert without it")
        return Path(value)

    def read(self, dotted: str) -> np.ndarray:
        """One whole param as a host numpy array (partial restore: nothing else is read)."""
        shape, dtype = self.params[dotted]
        path = self._prefix + tuple(dotted.split(".")) + ("value",)
        item, args = jax.ShapeDtypeStruct(shape, dtype), ocp.RestoreArgs(restore_type=np.ndarray, dtype=dtype)
        for key in reversed(path):
            item, args = {key: item}, {key: args}
        with ocp.PyTreeCheckpointer() as ckptr:
            restored = ckptr.restore(self._item, args=ocp.args.PyTreeRestore(item=item, restore_args=args,
                                                                             partial_restore=True))
        for key in path:
            restored = restored[key]
        return restored
