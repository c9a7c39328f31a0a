"""What a training run tells people: a status line when it starts and a short summary when
it ends (figures, where its files are, what to run next). The same summary, machine-readable,
goes to ``<run_dir>/summary.json``."""

from __future__ import annotations

import json
from pathlib import Path

from bagpiper_jax.config import Config


def describe_start(info: dict, step: int, steps: int) -> str:
    """One line: compile time, per-device memory, the data each source keeps, the start step."""
    memory = info["memory_gib"]
    device_gib = sum(memory.values()) if isinstance(memory, dict) else memory
    sources = ", ".join(f"{name} {r['kept']:,} of {r['records']:,} examples" for name, r in info["data"].items())
    where = "starting at step 0" if step == 0 else f"resuming at step {step:,}"
    trained = ""
    if info.get("frozen_params"):
        total = info["trainable_params"] + info["frozen_params"]
        trained = f"{info['trainable_params']:,} of {total:,} params train "
        trained += f"({info['optimizer_state_gib']} GiB optimizer state); "
    return (
        f"train step compiled in {info['compiled_s']:.1f} s ({device_gib:.2f} GiB per device); "
        f"{trained}data: {sources}; {where} of {steps:,}"
    )


def run_summary(
    cfg: Config,
    checkpoints,
    step: int,
    preempted: bool,
    wall_s: float,
    start_info: dict,
    last: dict,
    last_eval: dict,
) -> dict:
    """The run's summary: the last logged train and eval metrics, figures and file paths.

    Args:
      checkpoints: the run's :class:`~bagpiper_jax.checkpoint.run.RunCheckpoints`.
      last / last_eval: the last records written to ``metrics.jsonl`` (``eval/`` keys).
    """
    run_dir = Path(cfg.run_dir).absolute()
    return {
        **last,
        **{k: v for k, v in last_eval.items() if k != "step"},
        "step": step,
        "preempted": preempted,
        "wall_s": round(wall_s, 1),
        **start_info,
        "files": {
            "checkpoint": str(checkpoints.directory / str(step)),
            "metrics": str(run_dir / "metrics.jsonl"),
            "loss_curve": str(run_dir / "loss_curve.png"),
            "tensorboard": str(run_dir / "tensorboard"),
            "summary": str(run_dir / "summary.json"),
        },
    }


def write_summary(summary: dict) -> Path:
    path = Path(summary["files"]["summary"])
    path.write_text(json.dumps(summary, indent=1) + "\n")
    return path


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{int(seconds // 60)} min {seconds % 60:.0f} s"


def _shown(path: str) -> str:
    """``path`` relative to the working directory when it lies under it."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path


def describe_end(summary: dict, config_path: str, example_audio: str = "CLIP.wav") -> str:
    """A few lines for people: losses, steps, speed, the files, the next commands."""
    files = {name: _shown(path) for name, path in summary["files"].items()}
    losses = f"train loss {summary['loss']:.3f}" if "loss" in summary else "no step logged"
    if "eval/loss" in summary:
        losses += f", eval loss {summary['eval/loss']:.3f}"
    speed = f", {summary['frames_per_s']:,.0f} frames/s" if "frames_per_s" in summary else ""
    head = "Stopped (preempted)" if summary["preempted"] else "Finished"
    width = max(map(len, files))
    generate = f"bagpiper-generate --config {config_path} --checkpoint {files['checkpoint']}"
    lines = [
        f"{head} at step {summary['step']:,} after {_minutes(summary['wall_s'])}{speed}; {losses}.",
        *(f"  {name.replace('_', ' '):<{width}}  {path}" for name, path in files.items()),
        "Next:",
        f"  {generate} --audio {example_audio}",
        f'  {generate} --text "A loud high sine tone at 1200 hertz, lasting 1.5 seconds." --out tone.wav',
        f"  tensorboard --logdir {files['tensorboard']}",
    ]
    if summary["preempted"]:
        lines.append(f"  bagpiper-train --config {config_path}   # resumes at step {summary['step']:,}")
    return "\n".join(lines)
