"""Train-step throughput and MFU of the full Bagpiper step on the local devices; one JSON line.

The step is the real one: multi-stream embedding, continuous-feature adaptor, packed rows
(two segments each) with segment-isolated attention, chunked stream-0 loss, streams 1-7
audio-range loss, backward, global-norm clip and AdamW (DESIGN §7), params fp32, compute
per config. MFU = model FLOPs (``train_flops_per_frame``) x frames/s / ``--peak``.

    python bench/mfu.py --config configs/tiny.yaml --seq 256 --batch 8 --peak 1e12        # CPU
    python bench/mfu.py --config configs/8b.yaml --layers 8 --seq 4096 --batch 1          # one GPU
"""
import argparse
import json
import time

import jax
import optax

from bagpiper_jax.config import load_config
from bagpiper_jax.model.create import init_model
from bagpiper_jax.model.flops import train_flops_per_frame
from bagpiper_jax.model.step import batch_shardings, loss_fn
from bagpiper_jax.model.synthetic import synthetic_batch
from bagpiper_jax.sharding import make_mesh
from bagpiper_jax.vocab import Vocab

p = argparse.ArgumentParser()
p.add_argument("--config", default="configs/8b.yaml")
p.add_argument("--layers", type=int, default=0, help="override model.layers")
p.add_argument("--seq", type=int, default=4096)
p.add_argument("--batch", type=int, default=1)
p.add_argument("--continuous", type=int, default=64, help="continuous frames per row")
p.add_argument("--steps", type=int, default=8)
p.add_argument("--peak", type=float, default=989e12, help="peak FLOP/s per device (H100/H200 bf16)")
p.add_argument("overrides", nargs="*")
a = p.parse_args()

overrides = ([f"model.layers={a.layers}"] if a.layers else []) + [f"model.max_frames={max(a.seq, 1)}", *a.overrides]
cfg = load_config(a.config, overrides)
mesh = make_mesh(cfg.mesh)
rules = cfg.mesh.rules
graphdef, params, shardings = init_model(cfg.model, mesh, rules, cfg.seed)
tx = optax.chain(optax.clip_by_global_norm(1.0),
                 optax.adamw(1e-4, b1=0.9, b2=0.95, eps=1e-8, weight_decay=3e-7))
with jax.set_mesh(mesh):
    opt_state = jax.jit(tx.init)(params)
batch = synthetic_batch(Vocab.from_config(cfg.model), a.batch * jax.device_count(), a.seq, cfg.seed,
                        cfg.model.continuous_dim, a.continuous)
batch = jax.device_put(batch, batch_shardings(batch, mesh, rules))


def train_step(params, opt_state, batch):
    (loss, _), grads = jax.value_and_grad(lambda p: loss_fn(graphdef, p, batch), has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


step = jax.jit(train_step, donate_argnums=(0, 1))
with jax.set_mesh(mesh):
    t0 = time.perf_counter()
    compiled = step.lower(params, opt_state, batch).compile()
    compile_s = time.perf_counter() - t0
    params, opt_state, loss = compiled(params, opt_state, batch)
    loss.block_until_ready()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        params, opt_state, loss = compiled(params, opt_state, batch)
    loss.block_until_ready()
    dt = (time.perf_counter() - t0) / a.steps
frames = a.batch * jax.device_count() * a.seq
fpf = train_flops_per_frame(cfg.model, a.seq)
stats = jax.devices()[0].memory_stats() or {}
print(json.dumps({
    "what": "bagpiper-train-step", "device": jax.devices()[0].device_kind, "devices": jax.device_count(),
    "layers": cfg.model.layers, "hidden": cfg.model.hidden, "seq": a.seq, "batch_per_device": a.batch,
    "remat": cfg.model.remat, "attention": cfg.model.attention, "dtype": cfg.model.dtype,
    "loss_chunk": cfg.model.loss_chunk, "compile_s": round(compile_s, 1), "step_s": round(dt, 4),
    "frames_per_s": round(frames / dt, 1), "mfu": round(fpf * frames / dt / (a.peak * jax.device_count()), 4),
    "peak_memory_gib": round(stats.get("peak_bytes_in_use", 0) / 2**30, 2), "loss": float(loss)}))
