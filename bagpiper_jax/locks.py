"""Exclusive directory locks: one trainer per run directory, one preparer per output shard.

A lock is a file ``DIR/.<name>.lock`` holding its holder (host, pid, start time, command,
heartbeat) as JSON. It is taken with ``flock``, which the kernel drops when the holder
dies, so on one host a lock left by a killed process is stale by construction and the
next taker says so. Across hosts (a run directory on a shared mount, where ``flock`` is
host-local) the holder's heartbeat decides: a lock whose holder has not refreshed it for
``stale_after`` seconds is stale. Where ``flock`` is not supported at all, a holder on this
host is alive while its pid is.

    with DirectoryLock(run_dir, "train"):
        ...  # a second DirectoryLock(run_dir, "train") raises LockedError naming this holder
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import sys
import threading
import time
from pathlib import Path

from bagpiper_jax.errors import BagpiperError

log = logging.getLogger(__name__)


class LockedError(BagpiperError):
    """The directory is held by another live process; the message names it."""


def _holder_text(holder: dict) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return f"pid {holder.get('pid')} on host {holder.get('host')}, started {started}: {holder.get('command', '?')}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


class DirectoryLock:
    """An exclusive lock on ``directory`` for ``name`` (see the module docstring).

    Args:
      directory: created if missing.
      name: what is locked, e.g. ``"train"`` (file ``.train.lock``).
      what: how the refusal names the directory's use, e.g. ``"run directory"``.
      heartbeat: seconds between refreshes of the holder's heartbeat.
      stale_after: a holder on another host whose heartbeat is older is taken over.
    """

    def __init__(
        self, directory: str | Path, name: str, what: str = "directory", heartbeat: float = 60.0, stale_after=600.0
    ):
        self.path = Path(directory) / f".{name}.lock"
        self.what, self.heartbeat, self.stale_after = what, heartbeat, stale_after
        self._fd: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> dict:
        try:
            text = self.path.read_text()
            return json.loads(text) if text.strip() else {}
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            return {}

    def _refuse(self, holder: dict):
        raise LockedError(
            f"{self.path.parent} ({self.what}) is in use by {_holder_text(holder)}; "
            f"stop that process first (the lock is {self.path})"
        )

    def acquire(self) -> DirectoryLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            locked = self._flock(fd)
            holder, host = self._read(), socket.gethostname()
            if holder and not locked and holder.get("host") == host and _pid_alive(int(holder.get("pid", -1))):
                self._refuse(holder)  # no flock here: a live pid on this host holds it
            if holder and holder.get("host") != host:
                age = time.time() - float(holder.get("heartbeat", 0))
                if age < self.stale_after:
                    self._refuse(holder)
            if holder:
                log.warning("taking over the stale lock %s of %s (no longer running)", self.path, _holder_text(holder))
            self._write(fd, {"host": host, "pid": os.getpid(), "started": time.time(), "command": " ".join(sys.argv)})
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"lock-heartbeat {self.path}", daemon=True)
        self._thread.start()
        return self

    def _flock(self, fd: int) -> bool:
        """True when the kernel lock is held; False where the filesystem has no ``flock``."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            self._refuse(self._read())
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            log.warning("%s: the filesystem does not support flock; relying on the holder record", self.path)
        return False

    def _write(self, fd: int, holder: dict) -> None:
        self._holder = holder
        data = json.dumps({**holder, "heartbeat": time.time()}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            with contextlib.suppress(OSError):
                self._write(self._fd, self._holder)

    def release(self) -> None:
        """Clears the holder record (so the next taker finds no stale lock) and unlocks."""
        if self._fd is None:
            return
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        os.close(self._fd)  # drops the flock
        self._fd = None

    def __enter__(self) -> DirectoryLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
