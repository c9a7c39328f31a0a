"""Orbax checkpoints of a training run: train state, data-iterator state, config + metadata.

``<checkpoint_dir>/<step>/`` (by default ``<run_dir>/checkpoints``; a ``gs://`` URL is
written by Orbax directly) holds three items:

- ``state``: the train state (params, optimizer state, step; see
  :class:`~bagpiper_jax.train.state.TrainState`), written by every process for its
  shards; restored onto whatever mesh the targets' shardings describe, so a run can
  resume on a different mesh shape or device count;
- ``data``: each process's Grain iterator state (one file per process);
- ``meta``: the resolved config, step, frames seen and library version (JSON).

Saves are asynchronous. Orbax marks a step complete only once every file is written, so a
save interrupted mid-write is never listed; ``latest_step`` is the last complete one.
Just before that mark, process 0 seals the step with the checksums of its files
(:mod:`~bagpiper_jax.checkpoint.integrity`), so every complete step can be verified.

Integrity: :meth:`RunCheckpoints.restore_latest` verifies the newest step before reading
it (every process a share of its files); a damaged step is moved to ``damaged/<step>``
with a warning naming the file, and the next older step is tried, so an intact step is
never deleted because a damaged one is newer. A step whose stored model config differs
from the run's is refused, naming every differing field. A state holding NaN or Inf is
never saved.
"""

from __future__ import annotations

import logging
from pathlib import Path

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from bagpiper_jax.checkpoint import integrity
from bagpiper_jax.checkpoint.errors import CheckpointError
from bagpiper_jax.config import Config, ConfigError, ModelConfig, check_model_matches, config_from_dict, to_dict
from bagpiper_jax.version import __version__

log = logging.getLogger(__name__)
DAMAGED = "damaged"  # <checkpoint_dir>/damaged/<step>: steps found damaged, kept for inspection


class NonFiniteStateError(CheckpointError):
    """A train state holding NaN or Inf was not saved; the message names the leaves."""


def checkpoint_directory(cfg: Config) -> str:
    """Where a run's checkpoints live: ``train.checkpoint_dir``, else ``<run_dir>/checkpoints``."""
    return cfg.train.checkpoint_dir or str(Path(cfg.run_dir) / "checkpoints")


@jax.jit
def _finite_leaves(tree):
    return jax.tree.map(
        lambda x: jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.bool_(True), tree
    )


def non_finite_leaves(tree) -> list[str]:
    """Paths of the floating leaves of ``tree`` holding NaN or Inf (one reduction on device)."""
    flags = jax.device_get(_finite_leaves(tree))
    return [jax.tree_util.keystr(path) for path, ok in jax.tree_util.tree_flatten_with_path(flags)[0] if not ok]


def _agree(flag: bool) -> bool:
    """Whether ``flag`` holds on any process."""
    if jax.process_count() == 1:
        return flag
    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


class RunCheckpoints:
    """The checkpoints of one training run (an Orbax ``CheckpointManager`` of the three items)."""

    def __init__(self, directory: str | Path, keep: int, async_save: bool = True):
        """``directory``: the checkpoint directory (local path or a URL such as ``gs://b/run``).
        ``async_save=False`` opens it for reading (nothing is sealed)."""
        directory = str(directory)
        self.directory = epath.Path(directory if "://" in directory else Path(directory).absolute())
        self._saving: int | None = None  # the step whose async save is in flight
        self._saved: int | None = None  # the last step saved by this process
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            enable_async_checkpointing=async_save,
            create=True,
            async_options=ocp.AsyncOptions(post_finalization_callback=self._seal) if async_save else None,
        )
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "data": grain.checkpoint.CheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler(),
            },
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def _step_dir(self, step: int) -> epath.Path:
        return self.directory / str(step)

    def _seal(self) -> None:
        """Orbax's post-finalization callback (process 0, every file written, the step not
        yet marked complete): the step's checksums."""
        step = self._saving
        pending = [p for p in self.directory.iterdir() if p.name.startswith(f"{step}.") and "tmp" in p.name]
        integrity.seal(pending[0] if pending else self._step_dir(step))

    def save(self, step: int, state, data_iterator, cfg: Config, frames_seen: int) -> bool:
        """Saves ``state`` (the train state pytree), the iterator's state and the metadata
        (async). A step already saved is not saved again (returns False); a state holding
        NaN or Inf raises :class:`NonFiniteStateError` and nothing is written."""
        if step in (self._saved, self.manager.latest_step()):
            return False
        bad = non_finite_leaves(state)
        if bad:
            raise NonFiniteStateError(
                f"refusing to checkpoint step {step}: the train state holds NaN or Inf in "
                f"{', '.join(bad[:4])}{' ...' if len(bad) > 4 else ''} ({len(bad)} arrays); "
                f"the last checkpoint is step {self.manager.latest_step()} in {self.directory}"
            )
        self.manager.wait_until_finished()  # one save in flight: _seal knows its step
        self._saving = step
        meta = {"step": step, "frames_seen": frames_seen, "version": __version__, "config": to_dict(cfg)}
        saved = self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=grain.checkpoint.CheckpointSave(data_iterator),
                meta=ocp.args.JsonSave(meta),
            ),
        )
        if saved:
            self._saved = step
        return saved

    def read_meta(self, step: int) -> dict:
        """The metadata of ``step`` (resolved config, step, frames seen, version)."""
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def check_model(self, step: int, model: ModelConfig) -> None:
        """Raises ``ConfigError`` naming every architecture field in which ``model`` differs
        from the config stored with ``step``."""
        try:
            stored = config_from_dict(self.read_meta(step)["config"], f"{self._step_dir(step)}/meta")
        except (ConfigError, KeyError, TypeError) as e:
            raise CheckpointError(f"the config stored in {self._step_dir(step)}/meta does not load: {e}") from e
        check_model_matches(model, stored.model, self._step_dir(step))

    def _quarantine(self, step: int, damage: str) -> None:
        """Moves a damaged step out of the steps (to ``damaged/<step>``) on process 0."""
        log.warning("checkpoint step %d is damaged (%s): moving it to %s/, trying an older one", step, damage, DAMAGED)
        if jax.process_index() == 0:
            target = self.directory / DAMAGED / str(step)
            n = 0
            while target.exists():
                n += 1
                target = self.directory / DAMAGED / f"{step}-{n}"
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._step_dir(step).rename(target)
            except OSError as e:  # storage without directory renames: the damaged step goes
                log.warning("cannot move %s (%s): deleting it", self._step_dir(step), e)
                self.manager.delete(step)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"bagpiper-quarantine-{step}")
        self.manager.reload()

    def restore_latest(self, target, data_iterator, model: ModelConfig) -> tuple[int, object, dict] | None:
        """Restores the newest intact step: ``(step, state, metadata)``, or None when there is
        none. Steps whose files do not match their checksums are moved aside with a warning
        naming the file; ``model`` must match the stored config."""
        while (step := self.manager.latest_step()) is not None:
            verdict = integrity.verify(self._step_dir(step), (jax.process_index(), jax.process_count()))
            if verdict.damage:
                log.warning("step %d: %s", step, verdict.damage)
            if _agree(verdict.damage is not None):
                self._quarantine(step, verdict.damage or "found by another process")
                continue
            self.check_model(step, model)
            try:
                state, meta = self.restore(step, target, data_iterator)
            except (ValueError, OSError, KeyError) as e:  # not moved aside: the cause may be the config
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                unsealed = "" if verdict.sealed else " (a step saved without checksums)"
                raise CheckpointError(f"step {step} of {self.directory}{unsealed} does not restore: {first}") from e
            return step, state, meta
        return None

    def restore(self, step: int, target, data_iterator) -> tuple[object, dict]:
        """Restores ``target`` (abstract arrays with the shardings wanted now) and sets the
        iterator's state in place; returns the state and the metadata. Nothing is verified:
        :meth:`restore_latest` is the checked path."""
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target),
                data=grain.checkpoint.CheckpointRestore(data_iterator),
                meta=ocp.args.JsonRestore(),
            ),
        )
        return restored["state"], restored["meta"]

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def restore_state(self, step: int, target):
        """The train state alone (conversion and evaluation tools)."""
        return self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]

    def restore_data(self, step: int, data_iterator) -> None:
        """Sets the iterator's state in place to the one saved at ``step`` (nothing else is read)."""
        self.manager.restore(step, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(data_iterator)))

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.close()
