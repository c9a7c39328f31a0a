"""Evaluation during training: ``train.eval_tasks`` (eval manifests, the first ``samples``
items of each) generated and scored with the current params every ``train.eval_every``
steps, beside the held-out loss.

``bagpiper-train`` builds a :class:`PeriodicEval` and hands it to the trainer, which calls it
with the step and params; its scores are logged as ``eval/<name>/<task>/<metric>`` in
``metrics.jsonl`` and TensorBoard, and process 0 writes each pass's ``results.jsonl`` /
``summary.json`` under ``<run_dir>/eval/<name>/step_<step>/``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
from flax import nnx

from bagpiper_jax.config import Config
from bagpiper_jax.eval.demo import ensure_demo_eval
from bagpiper_jax.eval.manifest import EvalItem, ItemError, read_eval_manifest
from bagpiper_jax.eval.runner import MetricModels, evaluate, flat_scores
from bagpiper_jax.generate import Generator
from bagpiper_jax.model.create import abstract_model
from bagpiper_jax.sharding import make_mesh


@dataclasses.dataclass
class _Task:
    name: str
    items: list[EvalItem]
    errors: list[ItemError]


class PeriodicEval:
    """Scores ``cfg.train.eval_tasks`` for given params; the manifests, metric models and the
    :class:`Generator` (with its compiled programs) are made once."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.tasks = []
        for task in cfg.train.eval_tasks:
            if cfg.data.demo:  # the demo eval set is made on first use, like the demo corpus
                ensure_demo_eval(cfg, task.manifest)
            items, errors = read_eval_manifest(task.manifest, task.samples)
            self.tasks.append(_Task(task.name or Path(task.manifest).stem, items, errors))
        self.models = MetricModels.load(cfg, {i.task for t in self.tasks for i in t.items})
        # Built here, outside the trainer's mesh context; the params are the caller's, per call.
        graphdef, abstract = abstract_model(cfg.model, cfg.runtime, cfg.mesh.rules)
        self.generator = Generator(cfg, graphdef, abstract, make_mesh(cfg.mesh))

    def __call__(self, step: int, params: nnx.State) -> dict[str, float]:
        """``<name>/<task>/<metric>`` -> value for ``params`` (the train state's, on the
        config's mesh)."""
        self.generator.params = params
        metrics = {}
        for task in self.tasks:
            out = Path(self.cfg.run_dir) / "eval" / task.name / f"step_{step}" if jax.process_index() == 0 else None
            summary = evaluate(self.generator, task.items, task.errors, self.models, out, progress=False)
            metrics.update({f"{task.name}/{k}": v for k, v in flat_scores(summary).items()})
        return metrics


def periodic_eval(cfg: Config) -> PeriodicEval | None:
    """The training hook for ``cfg.train.eval_tasks`` (None when there are none)."""
    return PeriodicEval(cfg) if cfg.train.eval_tasks else None
