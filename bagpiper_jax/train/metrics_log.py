"""Training logs: ``metrics.jsonl`` (one object per logged step), TensorBoard events and a
loss-curve PNG, all under the run directory. Only process 0 writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tensorboardX import SummaryWriter


def _scalars(metrics: dict) -> dict[str, float]:
    """Flattens per-stream vectors into ``name/<stream>`` scalars."""
    out = {}
    for k, v in metrics.items():
        v = np.asarray(v)
        if v.ndim == 0:
            out[k] = float(v)
        else:
            out.update({f"{k}/{i}": float(x) for i, x in enumerate(v)})
    return out


class MetricsLog:
    """Writes a run's metrics (process 0 only; other processes get a disabled log)."""

    def __init__(self, run_dir: str | Path, enabled: bool = True):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self._writer = None
        if enabled:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._writer = SummaryWriter(str(self.run_dir / "tensorboard"))

    def write(self, step: int, metrics: dict, prefix: str = "") -> dict:
        """Logs ``metrics`` at ``step`` (keys prefixed, e.g. ``eval/``); returns the flat record."""
        record = {"step": step, **{prefix + k: v for k, v in _scalars(metrics).items()}}
        if self.enabled:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            for k, v in record.items():
                if k != "step":
                    self._writer.add_scalar(k, v, step)
            self._writer.flush()
        return record

    def plot_loss(self) -> Path | None:
        """Writes ``loss_curve.png`` (train and eval loss against step) from metrics.jsonl."""
        path = self.run_dir / "metrics.jsonl"
        if not self.enabled or not path.is_file():
            return None
        from matplotlib.figure import Figure  # slow to import; used once, at the end of a run

        records = [json.loads(line) for line in path.read_text().splitlines()]
        fig = Figure(figsize=(7, 4))
        ax = fig.subplots()
        for key, label in (("loss", "train"), ("eval/loss", "eval")):
            points = [(r["step"], r[key]) for r in records if key in r]
            if points:
                ax.plot(*zip(*points), label=label, marker="." if key.startswith("eval") else None)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title(self.run_dir.name)
        ax.legend()
        ax.grid(alpha=0.3)
        out = self.run_dir / "loss_curve.png"
        fig.savefig(out, dpi=100, bbox_inches="tight")
        return out

    def close(self):
        if self._writer is not None:
            self._writer.close()
