"""Orbax checkpoints of a training run: train state, data-iterator state, config + metadata.

``<checkpoint_dir>/<step>/`` (by default ``<run_dir>/checkpoints``; a ``gs://`` URL is
written by Orbax directly) holds three items:

- ``state``: the train state (params, optimizer state, step; see
  :class:`~bagpiper_jax.train.state.TrainState`), written by every process for its
  shards; restored onto whatever mesh the targets' shardings describe, so a run can
  resume on a different mesh shape or device count;
- ``data``: each process's Grain iterator state (one file per process);
- ``meta``: the resolved config, step, frames seen and library version (JSON).

Saves are asynchronous. Orbax writes into a temporary directory and renames it when the
save is complete, so a save interrupted mid-write is never listed; ``latest_step`` is the
last complete one.
"""

from __future__ import annotations

from pathlib import Path

import grain
import orbax.checkpoint as ocp
from etils import epath

from bagpiper_jax.config import Config, to_dict
from bagpiper_jax.version import __version__


def checkpoint_directory(cfg: Config) -> str:
    """Where a run's checkpoints live: ``train.checkpoint_dir``, else ``<run_dir>/checkpoints``."""
    return cfg.train.checkpoint_dir or str(Path(cfg.run_dir) / "checkpoints")


class RunCheckpoints:
    """The checkpoints of one training run (an Orbax ``CheckpointManager`` of the three items)."""

    def __init__(self, directory: str | Path, keep: int, async_save: bool = True):
        """``directory``: the checkpoint directory (local path or a URL such as ``gs://b/run``)."""
        directory = str(directory)
        self.directory = epath.Path(directory if "://" in directory else Path(directory).absolute())
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save, create=True)
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

    def save(self, step: int, state, data_iterator, cfg: Config, frames_seen: int, force: bool = False) -> bool:
        """Saves ``state`` (the train state pytree), the iterator's state and the metadata (async)."""
        meta = {"step": step, "frames_seen": frames_seen, "version": __version__, "config": to_dict(cfg)}
        return self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=grain.checkpoint.CheckpointSave(data_iterator),
                meta=ocp.args.JsonSave(meta),
            ),
            force=force,
        )

    def restore(self, step: int, target, data_iterator) -> tuple[object, dict]:
        """Restores ``target`` (abstract arrays with the shardings wanted now) and sets the
        iterator's state in place; returns the state and the metadata."""
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
