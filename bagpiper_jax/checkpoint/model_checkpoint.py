"""Model checkpoints (params only) and reading the params of any Bagpiper checkpoint.

A *model checkpoint* is what ``bagpiper-convert hf-qwen3`` / ``from-torch`` write and
``train.init_from`` accepts: a :mod:`~bagpiper_jax.checkpoint.params_dir` directory of kind
``"model"`` whose config is the resolved run config::

    CKPT/config.json       {"format": "bagpiper-params", "kind": "model", "config": RUN CONFIG,
                            "step": N, "source": ...}
    CKPT/params/           Orbax: the transformer params, the ``params`` of a TrainState
    CKPT/codec/            optional codec params directory (usable as ``assets.codec``)
    CKPT/audio_encoder/    optional audio tower params directory (``assets.audio_encoder``)

Restoring is Orbax's normal path with targets that carry the shardings of the *current*
mesh, so a checkpoint written on one mesh (e.g. fsdp=8) restores onto any other (data=2 x
fsdp=4, one device, ...). :class:`ParamsSource` reads the params of a model checkpoint or
of a training run's checkpoint (partial restore: no optimizer state), one param at a time
onto the host (export) or all at once onto a mesh.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx
from jax.sharding import Mesh

from bagpiper_jax.audio_encoder.config import AudioEncoderConfig
from bagpiper_jax.checkpoint import integrity
from bagpiper_jax.checkpoint.errors import CheckpointError
from bagpiper_jax.checkpoint.frozen_modules import load_codec_config, load_tower_config, save_codec, save_tower_params
from bagpiper_jax.checkpoint.hf_qwen3 import load_hf_qwen3
from bagpiper_jax.checkpoint.lazy_save import save_pytree
from bagpiper_jax.checkpoint.params_dir import is_params_dir, load_params, read_info, write_info
from bagpiper_jax.checkpoint.run import RunCheckpoints
from bagpiper_jax.codec.config import XCodecConfig
from bagpiper_jax.config import Config, ConfigError, check_model_matches, config_from_dict, read_json_file, to_dict
from bagpiper_jax.model.create import abstract_model
from bagpiper_jax.sharding import make_mesh, state_shardings, with_shardings

KIND = "model"
RUN_CONFIG = "config_resolved.json"  # the resolved config a training run writes into its run_dir


@dataclasses.dataclass
class FrozenModules:
    """Frozen modules stored beside the transformer (each optional)."""

    codec: tuple[XCodecConfig, dict] | None = None  # (config, flat params)
    audio_encoder: tuple[AudioEncoderConfig, dict] | None = None  # (config, nested params)


def load_frozen_modules(codec_dir: str | Path | None, encoder_dir: str | Path | None) -> FrozenModules:
    """Reads codec / audio tower params directories (``None`` or "": absent)."""
    modules = FrozenModules()
    if codec_dir:
        modules.codec = (load_codec_config(codec_dir), load_params(codec_dir))
    if encoder_dir:
        modules.audio_encoder = (load_tower_config(encoder_dir), load_params(encoder_dir))
    return modules


def save_model_checkpoint(
    directory: str | Path,
    cfg: Config,
    params: nnx.State,
    modules: FrozenModules,
    source: str,
    step: int = 0,
    **meta,
) -> Path:
    """Writes a model checkpoint: ``params`` (the sharded transformer state; leaves may be
    ``lazy_save.LazyArray`` s, each built only when it is written), the resolved ``cfg``,
    the frozen modules present in ``modules`` and further metadata ``meta`` (JSON values,
    e.g. the ``vocab_weight`` an ESPnet file came with)."""
    directory = Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    save_pytree(directory / "params", params)  # the layout of StandardSave, one param at a time
    if modules.codec is not None:
        save_codec(directory / "codec", *modules.codec)
    if modules.audio_encoder is not None:
        save_tower_params(directory / "audio_encoder", *modules.audio_encoder)
    return write_info(directory, KIND, to_dict(cfg), step=step, source=source, **meta)


def is_model_checkpoint(directory: str | Path) -> bool:
    return is_params_dir(directory, KIND)


def load_init_params(path: str | Path, cfg: Config, mesh: Mesh) -> nnx.State:
    """``train.init_from``: a model checkpoint (or run directory, or one step of a run), or
    an HF Qwen3 directory (extended as in docs/model.md, Vocabulary). Returns the params sharded on ``mesh``."""
    path = Path(path)
    if is_model_checkpoint(path) or (path / RUN_CONFIG).is_file() or (path / "state").is_dir():
        return ParamsSource(path).restore(cfg, mesh)[1]
    return load_hf_qwen3(path, cfg.model, cfg.runtime, mesh, cfg.mesh.rules, cfg.seed)[1]


def _without_step_metadata(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Metadata file does not exist")


@contextlib.contextmanager
def _item_checkpointer() -> Iterator[ocp.PyTreeCheckpointer]:
    """A checkpointer for one item of a checkpoint (a run step's ``state``, a model
    checkpoint's ``params``). Orbax's warning that the item has no metadata file of its own
    is dropped: a run step keeps that file beside its items, not in each."""
    absl_logger = logging.getLogger("absl")
    absl_logger.addFilter(_without_step_metadata)
    try:
        with ocp.PyTreeCheckpointer() as ckptr:
            yield ckptr
    finally:
        absl_logger.removeFilter(_without_step_metadata)


class ParamsSource:
    """The params of a model checkpoint, of a run directory (its latest or ``step``'s
    checkpoint, found under ``train.checkpoint_dir`` or ``<run_dir>/checkpoints``) or of one
    step of a run (``.../checkpoints/<step>``): read one param at a time onto the host
    (export) or all at once onto a mesh (:meth:`restore`).

    Attributes:
      config: the resolved config the params were made with.
      step: the checkpoint's step.
      run_checkpoints: for a run (or one of its steps), its checkpoint directory (whose
        ``step`` these params are); None for a model checkpoint.
      params: dotted param path -> (shape, stored dtype).
      codec_dir / encoder_dir: frozen module params directories to export with it (None:
        absent): a model checkpoint's own, or those the run's config names.
      meta: the metadata of the model checkpoint the params come from (``config.json``
        beyond format, kind and config): a model checkpoint's own; for a run, that of the
        model checkpoint its ``train.init_from`` names, when it is one and still there (the
        weights it started from), else empty.
    """

    def __init__(self, path: str | Path, step: int | None = None):
        path = Path(path).absolute()
        self.path = path
        if not path.exists():
            raise CheckpointError(f"checkpoint {path} does not exist")
        if is_model_checkpoint(path):
            if step is not None:
                raise CheckpointError(f"--step applies to run directories; {path} is a model checkpoint")
            info = read_info(path, KIND)
            self.meta = info.meta
            self.config, self.step = self._config(info.config, path), int(info.meta.get("step", 0))
            self.run_checkpoints = None
            self._item, self._prefix = path / "params", ()
            integrity.check_intact(self._item, "model checkpoint")
            self.codec_dir = path / "codec" if (path / "codec").is_dir() else None
            self.encoder_dir = path / "audio_encoder" if (path / "audio_encoder").is_dir() else None
            self._read_metadata()
            return
        if (path / RUN_CONFIG).is_file():  # a run directory: its latest (or --step) checkpoint
            self.config = self._config(json.loads((path / RUN_CONFIG).read_text()), path / RUN_CONFIG)
            directory = epath.Path(self.config.train.checkpoint_dir or path / "checkpoints")
            self.step = self._run_step(directory, step)
            step_dir = directory / str(self.step)
            integrity.check_intact(step_dir, f"checkpoint step {self.step}")
        elif (path / "state").is_dir() and (path / "meta").is_dir():  # one step of a run
            if step is not None:
                raise CheckpointError(f"--step applies to run directories; {path} is one step of a run")
            integrity.check_intact(path, "checkpoint step")
            meta = read_json_file(path / "meta" / "metadata", "the step's metadata", CheckpointError)
            self.config, self.step, step_dir = self._config(meta["config"], path / "meta"), meta["step"], path
            directory = epath.Path(path.parent)
        else:
            raise CheckpointError(
                f"{path} is neither a model checkpoint (a params directory of kind 'model'), "
                f"a run directory (holding {RUN_CONFIG}) nor one step of a run (state/, meta/)"
            )
        self._item, self._prefix = step_dir / "state", ("params",)
        self.run_checkpoints = directory
        init = self.config.train.init_from
        self.meta = read_info(init, KIND).meta if init and is_model_checkpoint(init) else {}
        self.codec_dir = self._configured_dir(self.config.assets.codec, "assets.codec", path)
        self.encoder_dir = self._configured_dir(self.config.assets.audio_encoder, "assets.audio_encoder", path)
        self._read_metadata()

    @staticmethod
    def _config(data: dict, source: Path) -> Config:
        try:
            return config_from_dict(data, str(source))
        except ConfigError as e:
            raise CheckpointError(f"the config stored in {source} does not load: {e}") from e

    def _read_metadata(self):
        with _item_checkpointer() as ckptr:
            tree = ckptr.metadata(self._item).item_metadata.tree
        for key in self._prefix:
            tree = tree[key]
        self.params = {
            ".".join(k.key for k in keys[:-1]): (tuple(meta.shape), np.dtype(meta.dtype))
            for keys, meta in jax.tree_util.tree_flatten_with_path(tree)[0]
        }  # keys end in "value"

    @staticmethod
    def _run_step(directory: epath.Path, step: int | None) -> int:
        ckpts = RunCheckpoints(directory, keep=2**31 - 1, async_save=False)  # read only: deletes nothing
        try:
            steps = ckpts.all_steps()
        finally:
            ckpts.close()
        if not steps:
            raise CheckpointError(f"{directory} holds no complete checkpoint")
        if step is None:
            return max(steps)
        if step not in steps:
            raise CheckpointError(f"{directory} has no step {step}; steps: {sorted(steps)}")
        return step

    def restore(self, cfg: Config, mesh: Mesh | None = None) -> tuple[nnx.GraphDef, nnx.State]:
        """All the params at once, sharded on ``mesh`` (default: ``cfg.mesh`` over all
        devices) by ``cfg``'s rules and stored in ``cfg.runtime.param_dtype`` (partial
        restore: never the optimizer state); ``cfg.model`` must match the checkpoint."""
        check_model_matches(cfg.model, self.config.model, self._item)
        graphdef, abstract = abstract_model(cfg.model, cfg.runtime, cfg.mesh.rules)
        tree = with_shardings(abstract, state_shardings(abstract, mesh or make_mesh(cfg.mesh), cfg.mesh.rules))
        for key in reversed(self._prefix):
            tree = {key: tree}
        with _item_checkpointer() as ckptr:
            restored = ckptr.restore(
                self._item,
                args=ocp.args.PyTreeRestore(
                    item=tree, restore_args=ocp.checkpoint_utils.construct_restore_args(tree), partial_restore=True
                ),
            )
        for key in self._prefix:
            restored = restored[key]
        return graphdef, restored

    @staticmethod
    def _configured_dir(value: str, field: str, run_dir: Path) -> Path | None:
        if not value:
            return None
        if not Path(value).is_dir():
            raise CheckpointError(
                f"{field}={value!r} (config of {run_dir}) does not exist; run from the "
                f"directory the run was started in, or convert without it"
            )
        return Path(value)

    def read(self, dotted: str) -> np.ndarray:
        """One whole param as a host numpy array (partial restore: nothing else is read)."""
        shape, dtype = self.params[dotted]
        path = self._prefix + tuple(dotted.split(".")) + ("value",)
        item, args = jax.ShapeDtypeStruct(shape, dtype), ocp.RestoreArgs(restore_type=np.ndarray, dtype=dtype)
        for key in reversed(path):
            item, args = {key: item}, {key: args}
        with _item_checkpointer() as ckptr:
            restored = ckptr.restore(
                self._item, args=ocp.args.PyTreeRestore(item=item, restore_args=args, partial_restore=True)
            )
        for key in path:
            restored = restored[key]
        return restored
