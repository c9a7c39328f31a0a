"""AOT-compile the 8B loss-and-gradient step on a simulated CPU mesh; print one JSON line.

Nothing is allocated: params and batch are abstract (``jax.ShapeDtypeStruct`` with
shardings). Reports compile seconds, parameter count, training FLOPs per frame and the
per-device memory from ``compiled.memory_analysis()``.

    python bench/compile_8b.py                      # fsdp=8 on 8 simulated devices, seq 8192
    python bench/compile_8b.py --devices 8 --seq 8192 mesh.data=2 mesh.fsdp=4
"""
import argparse
import os
import sys

p = argparse.ArgumentParser()
p.add_argument("--config", default=os.path.join(os.path.dirname(__file__), "..", "configs", "8b.yaml"))
p.add_argument("--devices", type=int, default=8)
p.add_argument("--seq", type=int, default=8192)
p.add_argument("--rows-per-device", type=int, default=1)
p.add_argument("--continuous", type=int, default=512, help="continuous feature rows per packed row")
p.add_argument("overrides", nargs="*")
args = p.parse_args()
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + f" --xla_force_host_platform_device_count={args.devices}")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from bagpiper_jax.config import load_config  # noqa: E402
from bagpiper_jax.model import Batch  # noqa: E402
from bagpiper_jax.model.create import abstract_model  # noqa: E402
from bagpiper_jax.model.flops import param_count, train_flops_per_frame  # noqa: E402
from bagpiper_jax.model.step import batch_shardings, jit_loss_and_grad  # noqa: E402
from bagpiper_jax.sharding import make_mesh, state_shardings  # noqa: E402
from bagpiper_jax.train.aot import device_memory_gib  # noqa: E402
from bagpiper_jax.train.state import with_shardings  # noqa: E402

cfg = load_config(args.config, ["mesh.fsdp=-1", *args.overrides])
mesh = make_mesh(cfg.mesh)
rules = cfg.mesh.rules
graphdef, abstract = abstract_model(cfg.model, rules)
shardings = state_shardings(abstract, mesh, rules)
params = with_shardings(abstract, shardings)
rows, m = args.rows_per_device * args.devices, cfg.model
spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype)
batch = Batch(ids=spec((rows, args.seq, m.num_streams), jnp.int32), segment_ids=spec((rows, args.seq), jnp.int32),
              positions=spec((rows, args.seq), jnp.int32),
              loss_mask=spec((rows, args.seq, m.num_streams), jnp.float32),
              continuous=spec((rows, args.continuous, m.continuous_dim), jnp.bfloat16) if args.continuous else None,
              continuous_frames=spec((rows, args.continuous), jnp.int32) if args.continuous else None)
step = jit_loss_and_grad(graphdef, shardings, batch_shardings(batch, mesh, rules), mesh)
t0 = time.perf_counter()
with jax.set_mesh(mesh):
    compiled = step.lower(params, batch).compile()
compile_s = time.perf_counter() - t0
memory = device_memory_gib(compiled)
print(json.dumps({
    "what": "compile_8b_loss_and_grad", "devices": args.devices, "mesh": dict(mesh.shape),
    "seq": args.seq, "global_rows": rows, "remat": m.remat, "dtype": m.dtype,
    "params": sum(x.size for x in jax.tree.leaves(abstract)), "params_formula": param_count(m).total,
    "train_flops_per_frame": train_flops_per_frame(m, args.seq), "compile_s": round(compile_s, 1),
    "per_device_memory": memory, "backend": jax.default_backend()}))
sys.stdout.flush()
