"""The largest per-chip batch and its remat policy for a slice, by ahead-of-time compiles
(``bench/compile_tpu.py --plan``).

The search follows MaxText's batch/remat estimator: remat policies are tried from the one
that keeps least for the backward pass (``full``) to the one that keeps most (``none``).
For the first, the largest micro-batch that fits is found by doubling and then bisection;
each next policy only searches below the previous one's (keeping more never fits more), and
the search stops at the first policy where one row per shard does not fit. The unit is rows
of ``data.row_frames`` per data-parallel shard (``mesh.data x mesh.fsdp``) per micro-batch.
A candidate fits when the compiled step's peak per-chip memory (arguments + outputs +
temporaries - aliased, from ``memory_analysis()``) leaves 10% of the chip's HBM free, or
when XLA refuses it for lack of memory.

For each policy's largest micro-batch the plan estimates MFU from XLA's cost analysis.
XLA counts a loop body once, not once per trip, so the cost comes from two loop-free
proxies of the same step (one and two layers unrolled, ``runtime.scan_layers=false``, the
loss in one chunk, XLA attention so its FLOPs are visible, no accumulation): their
difference is one layer, and ``one-layer + (layers - 1) x layer`` is the step. The estimate
is the model FLOPs (``train_flops_per_frame``) over XLA's roofline time for the step
(``optimal_seconds``, the per-op bound of compute and memory traffic; collectives and
the frozen tower's loops are not modelled) at ``train.peak_flops``: an upper bound that
ranks remat policies by their recompute and memory traffic.

Each policy's micro-batch is turned into ``data.batch_rows`` / ``train.grad_accum`` keeping
the config's global batch (the largest micro-batch that divides it), or, if even one
micro-batch exceeds it, the micro-batch as the global batch.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import jax

from bagpiper_jax.config import Config
from bagpiper_jax.model.create import abstract_model
from bagpiper_jax.model.flops import train_flops_per_frame
from bagpiper_jax.sharding import make_mesh
from bagpiper_jax.train.aot import HBM_GIB, compile_step, device_memory_gib
from bagpiper_jax.train.trainable import TrainableParams

log = logging.getLogger(__name__)

REMAT_LEAST_MEMORY_FIRST = ("full", "qkv_attention", "dots", "dots_attention", "none")
HEADROOM = 0.10


def largest_fitting(fits: Callable[[int], bool], limit: int | None = None) -> int:
    """The largest ``n >= 1`` with ``fits(n)`` (``fits`` true up to some ``n``, false
    beyond), at most ``limit``; 0 if ``fits(1)`` is false. Without a limit: doubling from 1,
    then bisection; with one: ``limit`` itself, else bisection below it."""
    if limit is not None and fits(limit):
        return limit
    if (limit is not None and limit <= 1) or not fits(1):
        return 0
    good, bad = 1, limit
    while bad is None:
        if fits(2 * good):
            good *= 2
        else:
            bad = 2 * good
    while bad - good > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if fits(mid) else (good, mid)
    return good


def _with(cfg: Config, **sections) -> Config:
    """``cfg`` with fields replaced per section: ``_with(cfg, runtime={"remat": "full"})``."""
    return dataclasses.replace(
        cfg, **{name: dataclasses.replace(getattr(cfg, name), **fields) for name, fields in sections.items()}
    )


def xla_step_cost(cfg: Config, devices: list[jax.Device], encoder: bool) -> dict[str, float]:
    """XLA's cost analysis (``flops``, ``optimal_seconds``) of ``cfg``'s train step per chip,
    every layer and micro-batch counted (see the module doc)."""
    proxy = _with(
        cfg,
        runtime={"scan_layers": False, "loss_chunk": cfg.data.row_frames, "attention": "xla"},
        data={"batch_rows": cfg.data.batch_rows // cfg.train.grad_accum},
        train={"grad_accum": 1},
    )
    one, two = (compile_step(_with(proxy, model={"layers": n}), devices, encoder)[1].cost_analysis() for n in (1, 2))
    keys = [k for k in ("flops", "optimal_seconds") if k in one]
    return {k: (one[k] + (cfg.model.layers - 1) * (two[k] - one[k])) * cfg.train.grad_accum for k in keys}


def mfu_estimate(cfg: Config, cost: dict[str, float], chips: int, frozen: frozenset[str]) -> float:
    """Model FLOPs per chip of one step over XLA's roofline time at ``train.peak_flops``
    (``flops / peak`` where the backend gives no ``optimal_seconds``)."""
    frames = cfg.data.batch_rows * cfg.data.row_frames
    model_flops = train_flops_per_frame(cfg.model, cfg.data.row_frames, frozen) * frames / chips
    seconds = cost.get("optimal_seconds") or cost["flops"] / cfg.train.peak_flops
    return model_flops / (seconds * cfg.train.peak_flops)


def _batch_layout(global_rows: int, micro_rows: int, shards: int) -> dict[str, int]:
    """``data.batch_rows`` / ``train.grad_accum`` for micro-batches of at most ``micro_rows``
    rows (a multiple of ``shards``) that keep ``global_rows`` when some multiple divides it."""
    for rows in range(micro_rows, 0, -shards):
        if global_rows % rows == 0:
            return {"batch_rows": global_rows, "grad_accum": global_rows // rows}
    return {"batch_rows": micro_rows, "grad_accum": 1}


@dataclasses.dataclass
class MemoryPlan:
    """What :func:`plan` found."""

    hbm_gib: float
    budget_gib: float
    shards: int
    searched: list[dict]  # every compile: remat, rows_per_shard, total_gib, fits
    frontier: list[dict]  # per policy that fits at all: its largest micro-batch and estimate

    @property
    def largest(self) -> dict | None:
        """The frontier point with the largest per-chip batch."""
        return max(self.frontier, key=lambda p: (p["rows_per_shard"], p["mfu_estimate"]), default=None)

    @property
    def best(self) -> dict | None:
        """The frontier point with the highest estimated MFU."""
        return max(self.frontier, key=lambda p: p["mfu_estimate"], default=None)


def plan(
    cfg: Config,
    devices: list[jax.Device],
    encoder: bool = True,
    policies: tuple[str, ...] = REMAT_LEAST_MEMORY_FIRST,
    max_rows_per_shard: int | None = None,
    hbm_gib: float | None = None,
) -> MemoryPlan:
    """Searches remat ``policies`` (given least memory first) and micro-batch sizes of
    ``cfg``'s step on ``devices`` (see the module doc); ``hbm_gib`` defaults to the chip's."""
    hbm = hbm_gib or HBM_GIB.get(devices[0].device_kind)
    if hbm is None:
        raise ValueError(f"HBM of {devices[0].device_kind!r} unknown: give hbm_gib")
    budget = (1 - HEADROOM) * hbm
    mesh = make_mesh(cfg.mesh, devices)
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    frozen = TrainableParams.select(cfg.train.trainable, abstract_model(cfg.model)[1]).frozen_names
    searched, memory = [], {}

    def candidate(remat: str, rows_per_shard: int) -> Config:
        return _with(
            cfg, runtime={"remat": remat}, data={"batch_rows": rows_per_shard * shards}, train={"grad_accum": 1}
        )

    def fits(remat: str, rows_per_shard: int) -> bool:
        try:
            total = device_memory_gib(compile_step(candidate(remat, rows_per_shard), devices, encoder)[1])["total_gib"]
        except jax.errors.JaxRuntimeError as e:  # XLA refuses a program over the chip's memory
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            total = float("inf")
        memory[remat, rows_per_shard] = total
        searched.append({"remat": remat, "rows_per_shard": rows_per_shard, "total_gib": total, "fits": total <= budget})
        log.info("remat %s, %d rows per shard: %.1f GiB (budget %.1f)", remat, rows_per_shard, total, budget)
        return total <= budget

    frontier, limit = [], max_rows_per_shard
    for remat in policies:
        rows = largest_fitting(lambda n, r=remat: fits(r, n), limit)
        if not rows:
            break
        limit = rows
        chosen = candidate(remat, rows)
        cost = xla_step_cost(chosen, devices, encoder)
        frontier.append(
            {
                "remat": remat,
                "rows_per_shard": rows,
                "frames_per_chip": rows * shards * cfg.data.row_frames // len(devices),
                "total_gib": memory[remat, rows],
                "mfu_estimate": round(mfu_estimate(chosen, cost, len(devices), frozen), 4),
                "xla_flops_per_chip": cost["flops"],
                **_batch_layout(cfg.data.batch_rows, rows * shards, shards),
            }
        )
    return MemoryPlan(hbm, round(budget, 2), shards, searched, frontier)
