"""bagpiper-train as a process: preemption (SIGTERM), SIGKILL + restart, and two processes
(4 devices each, gloo) against one process with 8 devices."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import DEMO, demo_overrides

LAUNCH_LOCAL = Path(__file__).resolve().parents[1] / "launch" / "local.sh"

pytestmark = pytest.mark.slow
COMMON = ["train.log_every=1", "train.eval_every=1000", "data.input_shards=2"]


def launch(root, run_dir, *overrides, devices=8, env=None):
    cmd = [
        sys.executable,
        "-m",
        "bagpiper_jax.cli.train",
        "--config",
        str(DEMO),
        "--no-progress",
        *demo_overrides(root),
        f"run_dir={run_dir}",
        *COMMON,
        *overrides,
    ]
    full_env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "JAX_PLATFORMS": "cpu",
        **(env or {}),
    }
    return subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc, timeout=600):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def logged_losses(run_dir):
    """Loss per step; a step logged twice (before a kill and after the restart) keeps the last."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return {}
    return {r["step"]: r["loss"] for r in map(json.loads, path.read_text().splitlines()) if "loss" in r}


def wait_for(predicate, proc, timeout=600):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(proc.stdout.read()[-3000:])
        time.sleep(0.2)
    raise TimeoutError


def test_sigterm_saves_the_current_step_and_exits_zero(demo_root, tmp_path):
    run = tmp_path / "run"
    proc = launch(demo_root, run, "train.steps=1000", "train.checkpoint_every=1000")
    wait_for(lambda: len(logged_losses(run)) >= 3, proc)
    proc.send_signal(signal.SIGTERM)
    out = finish(proc)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["preempted"] is True and out.splitlines()[-1].startswith("  bagpiper-train --config")
    saved = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    assert saved == [summary["step"]] and summary["step"] >= 3


def test_sigkill_then_restart_matches_uninterrupted(demo_root, tmp_path):
    finish(launch(demo_root, tmp_path / "a", "train.steps=8", "train.checkpoint_every=3"))
    run = tmp_path / "b"
    proc = launch(demo_root, run, "train.steps=8", "train.checkpoint_every=3")
    wait_for(lambda: (run / "checkpoints" / "3").is_dir() and max(logged_losses(run), default=0) >= 4, proc)
    proc.kill()
    proc.wait()
    finish(launch(demo_root, run, "train.steps=8", "train.checkpoint_every=3"))
    a, b = logged_losses(tmp_path / "a"), logged_losses(run)
    assert [a[s] for s in range(1, 9)] == [b[s] for s in range(1, 9)]  # bit-identical


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_processes(root, run_dir, *overrides):
    """Two processes of 4 CPU devices each, started by ``launch/local.sh``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PROCESSES": "2",
        "DEVICES_PER_PROCESS": "4",
        "PORT": str(free_port()),
        "LOG_DIR": str(run_dir),
    }
    cmd = ["bash", str(LAUNCH_LOCAL), str(DEMO), *demo_overrides(root), f"run_dir={run_dir}", *COMMON, *overrides]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    logs = "\n".join(p.read_text()[-2000:] for p in sorted(run_dir.glob("local-process-*.log")))
    assert done.returncode == 0, done.stderr[-2000:] + logs


def mixture(root) -> list[str]:
    """Overrides drawing from the demo's training (weight 3) and held-out (weight 1) shards."""
    demo = root / "demo"
    return [
        'data.prepared=""',
        'data.eval_prepared=""',
        f"data.sources=[{{name: train, prepared: {demo}/prepared, weight: 3}}, "
        f"{{name: held, prepared: {demo}/heldout, weight: 1}}]",
    ]


def test_two_processes_equal_one_and_resume_with_a_mixture(demo_root, tmp_path):
    two_processes(demo_root, tmp_path / "multi", "train.steps=4", "train.checkpoint_every=2", *mixture(demo_root))
    assert sorted((tmp_path / "multi" / "checkpoints" / "4" / "data").glob("process_*")) != []
    two_processes(
        demo_root,
        tmp_path / "multi",
        "train.steps=6",
        "train.checkpoint_every=2",  # resumes at 4
        *mixture(demo_root),
    )
    finish(launch(demo_root, tmp_path / "single", "train.steps=6", "train.checkpoint_every=2", *mixture(demo_root)))
    multi, single = logged_losses(tmp_path / "multi"), logged_losses(tmp_path / "single")
    np.testing.assert_allclose([multi[s] for s in range(1, 7)], [single[s] for s in range(1, 7)], rtol=1e-5)
    records = [json.loads(x) for x in (tmp_path / "single" / "metrics.jsonl").read_text().splitlines()]
    assert {"source/train/loss", "source/held/frames"} <= set(records[0])
