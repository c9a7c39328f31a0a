"""AOT-compile the full 8B train step on simulated CPU devices; print one JSON line.

Nothing is allocated: the train state, the frozen audio tower and the batch are abstract
(``jax.ShapeDtypeStruct`` with shardings). The step is what ``bagpiper-train`` runs (see
``bench/compile_tpu.py``, which compiles it for a TPU slice). Reports compile seconds,
parameter count, training FLOPs per frame and the per-device memory from
``compiled.memory_analysis()``.

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
p.add_argument("--no-encoder", action="store_true", help="leave the frozen audio tower out of the step")
p.add_argument("overrides", nargs="*")
args = p.parse_args()
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={args.devices}"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json

import jax
from compile_tpu import compile_report

from bagpiper_jax.config import load_config
from bagpiper_jax.model.create import abstract_model
from bagpiper_jax.model.flops import param_count

cfg = load_config(
    args.config,
    [
        "mesh.fsdp=-1",
        f"data.row_frames={args.seq}",
        f"data.batch_rows={args.rows_per_device * args.devices}",
        *args.overrides,
    ],
)
report = compile_report(cfg, jax.devices(), encoder=not args.no_encoder)
abstract = abstract_model(cfg.model, cfg.runtime, cfg.mesh.rules)[1]
print(
    json.dumps(
        {
            "what": "compile_8b_train_step",
            "devices": args.devices,
            "seq": args.seq,
            "dtype": cfg.runtime.dtype,
            "params": sum(x.size for x in jax.tree.leaves(abstract)),
            "params_formula": param_count(cfg.model).total,
            **report,
            "backend": jax.default_backend(),
        }
    )
)
sys.stdout.flush()
