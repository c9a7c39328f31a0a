"""What a person sees from bagpiper-train: no other library's INFO logs unless --verbose, one
status line at start, and an end-of-run summary that names files that exist."""

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from absl import logging as absl_logging
from helpers import DEMO, demo_overrides

from bagpiper_jax.cli.command import configure_logging
from bagpiper_jax.errors import BagpiperError

SHORT = ["train.steps=2", "train.log_every=1", "train.eval_every=2", "train.checkpoint_every=2", "train.eval_batches=1"]


def train_cli(root, run_dir, *flags: str, env=None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "bagpiper_jax.cli.train", "--config", str(DEMO), "--no-progress", *flags]
    cmd += [*demo_overrides(root), f"run_dir={run_dir}", *SHORT]
    done = subprocess.run(cmd, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def info_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if re.search(r"\bINFO\b", line)]


def test_quiet_by_default_and_a_summary_naming_existing_files(demo_root, tmp_path):
    done = train_cli(demo_root, tmp_path / "run")
    assert info_lines(done.stderr) == [], done.stderr
    assert "train step compiled in" in done.stderr and "starting at step 0 of 2" in done.stderr
    out = done.stdout
    assert out.startswith("Finished at step 2 after") and "train loss" in out and "eval loss" in out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["step"] == 2 and summary["preempted"] is False and "eval/loss" in summary
    for name, path in summary["files"].items():
        assert Path(path).exists(), name
        assert path in out  # every file is named in the printed summary
    assert f"tensorboard --logdir {summary['files']['tensorboard']}" in out
    assert f"--checkpoint {summary['files']['checkpoint']}" in out


def test_verbose_shows_the_libraries_info_logs(demo_root, tmp_path):
    done = train_cli(demo_root, tmp_path / "run", "--json", "--verbose")
    assert any(" absl: " in line for line in info_lines(done.stderr)), done.stderr  # Orbax logs through absl
    assert json.loads(done.stdout.strip().splitlines()[-1])["step"] == 2  # --json: the summary as JSON


@pytest.fixture
def saved_logging():
    root, handlers, level = logging.getLogger(), logging.getLogger().handlers[:], logging.getLogger().level
    ours, absl = logging.getLogger("bagpiper_jax").level, absl_logging.get_verbosity()
    yield
    absl_logging.set_verbosity(absl)
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("bagpiper_jax").setLevel(ours)


def test_log_levels(monkeypatch, saved_logging):
    configure_logging()
    assert logging.getLogger().level == logging.WARNING and logging.getLogger("bagpiper_jax").level == logging.INFO
    configure_logging(verbose=True)
    assert logging.getLogger().level == logging.INFO
    monkeypatch.setenv("BAGPIPER_LOG", "debug")
    configure_logging()
    assert logging.getLogger().level == logging.DEBUG == logging.getLogger("bagpiper_jax").level
    monkeypatch.setenv("BAGPIPER_LOG", "loud")
    with pytest.raises(BagpiperError, match="BAGPIPER_LOG=loud: expected debug, info, warning or error"):
        configure_logging()
