"""The cluster launch scripts, run against stand-in ``gcloud`` / ``srun`` that record their
arguments (the multi-process local launcher runs for real in test_train_processes.py)."""

import os
import re
import subprocess
from pathlib import Path

from bagpiper_jax.config import load_config

REPO = Path(__file__).resolve().parents[1]


def fake_tool(bin_dir: Path, name: str, calls: Path):
    """``name`` on PATH writes its argv (NUL-separated) to a new file in ``calls``."""
    bin_dir.mkdir(exist_ok=True)
    tool = bin_dir / name
    tool.write_text(f'#!/usr/bin/env bash\nprintf "%s\\0" "$@" > "$(mktemp -p {calls} call.XXXXXX)"\n')
    tool.chmod(0o755)


def run(script: str, args: list[str], env: dict, tmp_path: Path) -> list[list[str]]:
    """Runs ``launch/<script>``; returns the argv of each stand-in tool call."""
    calls = tmp_path / "calls"
    calls.mkdir()
    for tool in ("gcloud", "srun"):
        fake_tool(tmp_path / "bin", tool, calls)
    full_env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", **env}
    done = subprocess.run(
        ["bash", str(REPO / "launch" / script), *args], env=full_env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return [f.read_bytes().decode().split("\0")[:-1] for f in sorted(calls.iterdir(), key=os.path.getmtime)]


def test_tpu_pod_train_runs_bagpiper_train_on_every_host(tmp_path):
    env = {
        "TPU_NAME": "pod",
        "ZONE": "us-east5-a",
        "ACCELERATOR": "v5p-256",
        "BUCKET": "gs://bkt",
        "RUN": "r1",
        "INIT_FROM": "models/Qwen3-8B-Base",
    }
    [call] = run("tpu_pod.sh", ["train", "train.steps=10"], env, tmp_path)
    assert call[:5] == ["compute", "tpus", "tpu-vm", "ssh", "pod"] and "--worker=all" in call
    command = next(a.split("=", 1)[1] for a in call if a.startswith("--command="))
    assert "BAGPIPER_DISTRIBUTED=auto" in command
    config = re.search(r"bagpiper-train --config (\S+)", command).group(1)
    overrides = re.findall(r"\b([a-z_]+(?:\.[a-z_]+)*=\S+)", command.split("--no-progress", 1)[1])
    assert "train.checkpoint_dir=gs://bkt/runs/r1/checkpoints" in overrides
    assert "train.init_from=/mnt/bagpiper/models/Qwen3-8B-Base" in overrides and "train.steps=10" in overrides
    cfg = load_config(REPO / config, overrides)  # the shipped config and every override are valid
    assert cfg.run_dir == "/mnt/bagpiper/runs/r1" and cfg.data.prepared == "/mnt/bagpiper/data/prepared"


def test_tpu_pod_create_uses_the_runtime_of_the_accelerator(tmp_path):
    env = {"TPU_NAME": "pod", "ZONE": "z", "ACCELERATOR": "v6e-256"}
    [call] = run("tpu_pod.sh", ["create"], env, tmp_path)
    assert "--accelerator-type=v6e-256" in call and "--version=v2-alpha-tpuv6e" in call


def test_slurm_script_starts_one_task_per_gpu_with_auto_distributed(tmp_path):
    [call] = run("slurm_gpu.sbatch", ["configs/8b.yaml", "run_dir=/shared/r"], {}, tmp_path)
    assert call[call.index("--config") + 1] == "configs/8b.yaml" and call[-1] == "run_dir=/shared/r"
    script = (REPO / "launch" / "slurm_gpu.sbatch").read_text()
    per_node = re.search(r"--ntasks-per-node=(\d+)", script).group(1)
    assert re.search(rf"--gpus-per-node={per_node}\b", script) and "BAGPIPER_DISTRIBUTED=auto" in script
