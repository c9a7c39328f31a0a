"""bagpiper_jax.compat: with the private Grain/Orbax paths switched off
(``BAGPIPER_COMPAT=public``, what an untested release gets) the pipeline yields the same
batches and lazy_save writes a checkpoint that restores to the same values."""

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from test_data_pipeline import fields, pipeline, prepared  # noqa: F401 - prepared is a fixture

from bagpiper_jax import compat

TESTS = Path(__file__).resolve().parent


def run_public(code: str) -> str:
    """Runs ``code`` in a fresh interpreter with the public paths forced; returns stdout."""
    env = {**os.environ, "BAGPIPER_COMPAT": "public", "PYTHONPATH": f"{TESTS}:{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run(
        [sys.executable, "-c", "import conftest\n" + code],
        capture_output=True,
        text=True,
        env=env,
        cwd=TESTS,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_the_tested_releases_use_the_fast_paths():
    assert compat.GRAIN_PACKER and compat.ORBAX_WRITER is not None


def test_public_packer_gives_the_same_batches(prepared, tmp_path):  # noqa: F811
    directory, _ = prepared
    out = tmp_path / "public.npz"
    assert (
        json.loads(
            run_public(f"""
import itertools, json, numpy as np
from bagpiper_jax import compat
from test_data_pipeline import fields, pipeline
batches = [fields(b) for b in itertools.islice(iter(pipeline({str(directory)!r})), 4)]
np.savez({str(out)!r}, **{{f"{{i}}/{{k}}": v for i, b in enumerate(batches) for k, v in b.items()}})
print(json.dumps(compat.GRAIN_PACKER))""").splitlines()[-1]
        )
        is False
    )
    public = np.load(out)
    fast = [fields(b) for b in itertools.islice(iter(pipeline(directory)), 4)]
    for i, batch in enumerate(fast):
        for k, v in batch.items():
            np.testing.assert_array_equal(public[f"{i}/{k}"], v, err_msg=f"batch {i} {k}")


def test_public_lazy_save_restores_the_same_values(tmp_path):
    values = {
        "a": {"value": np.arange(96, dtype=np.float32).reshape(12, 8)},
        "b": {"value": np.linspace(0, 1, 5, dtype=np.float32)},
    }
    np.savez(tmp_path / "values.npz", a=values["a"]["value"], b=values["b"]["value"])
    run_public(f"""
import jax, numpy as np
from bagpiper_jax import compat
from bagpiper_jax.checkpoint.lazy_save import LazyArray, save_pytree
assert compat.ORBAX_WRITER is None
values = np.load({str(tmp_path / "values.npz")!r})
device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
def lazy(k):
    return LazyArray(values[k].shape, values[k].dtype, device, lambda: lambda index: values[k][index])
tree = {{k: {{"value": lazy(k)}} for k in ("a", "b")}}
save_pytree({str(tmp_path / "ckpt")!r}, tree)""")
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=device), values)
    with ocp.StandardCheckpointer() as ckptr:
        restored = ckptr.restore(tmp_path / "ckpt", target)
    jax.tree.map(np.testing.assert_array_equal, restored, values)
