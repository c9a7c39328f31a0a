"""``bagpiper-smoke``: a forward/backward smoke run of the model on synthetic packed rows.

Builds the mesh from the config, initialises the model sharded on it, and takes a few
plain gradient-descent steps on one fixed synthetic batch (two packed segments per row,
text on stream 0 and audio on all streams), printing one JSON line per step. The loss
must fall: the model memorises the batch. ``bagpiper-train`` replaces this as the main
job once the data pipeline and trainer exist.

    bagpiper-smoke --config configs/tiny.yaml [key=value ...] [--steps N] [--rows N]
"""
from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
from bagpiper_jax.config import load_config
from bagpiper_jax.model import Batch
from bagpiper_jax.model.create import init_model
from bagpiper_jax.model.step import batch_shardings, jit_loss_and_grad
from bagpiper_jax.model.synthetic import synthetic_batch
from bagpiper_jax.sharding import make_mesh
from bagpiper_jax.vocab import Vocab


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bagpiper-smoke", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rows", type=int, default=0, help="batch rows (default: one per device)")
    parser.add_argument("--frames", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("overrides", nargs="*", help="config overrides, key.path=value")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    mesh = make_mesh(cfg.mesh)
    rules = cfg.mesh.rules
    graphdef, params, shardings = init_model(cfg.model, mesh, rules, cfg.seed)
    batch = synthetic_batch(Vocab.from_config(cfg.model), args.rows or jax.device_count(), args.frames, cfg.seed)
    step = jit_loss_and_grad(graphdef, shardings, batch_shardings(batch, mesh, rules), mesh)
    sgd = jax.jit(lambda p, g: jax.tree.map(lambda w, d: w - args.lr * d, p, g), donate_argnums=0,
                  out_shardings=shardings)
    first = None
    with jax.set_mesh(mesh):
        for i in range(args.steps):
            t0 = time.perf_counter()
            (loss, metrics), grads = step(params, batch)
            params = sgd(params, grads)
            loss = float(loss)
            first = loss if first is None else first
            print(json.dumps({"step": i, "loss": round(loss, 5),
                              "stream_accuracy": [round(float(a), 3) for a in metrics["stream_accuracy"]],
                              "step_s": round(time.perf_counter() - t0, 3), "devices": jax.device_count(),
                              "mesh": dict(mesh.shape)}), flush=True)
    if not loss < first:
        print(f"loss did not fall: {first:.4f} -> {loss:.4f}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
