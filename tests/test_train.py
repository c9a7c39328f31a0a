"""Training: learning on the demo corpus, exact resume, other-mesh restore, gradient accumulation."""
import json

import jax
import numpy as np
import pytest
from flax import nnx

from bagpiper_jax.model.create import abstract_model, init_model
from bagpiper_jax.sharding import make_mesh
from bagpiper_jax.train.checkpoint import RunCheckpoints
from bagpiper_jax.train.optimizer import learning_rate, make_optimizer
from bagpiper_jax.train.state import abstract_state, init_state, train_state_shardings, with_shardings
from bagpiper_jax.train.step import make_train_step
from bagpiper_jax.train.trainer import train

from helpers import demo_config, packed_batch, tiny_config


def losses(run_dir):
    return {r["step"]: r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if "loss" in r}


def test_loss_falls_on_the_demo_corpus(demo_root, tmp_path):
    cfg = demo_config(demo_root, f"run_dir={tmp_path}/run", "train.steps=40", "train.log_every=1",
                      "train.eval_every=40", "train.checkpoint_every=40", "train.warmup_steps=5",
                      "train.decay_steps=40")
    summary = train(cfg, progress=False)
    curve = losses(tmp_path / "run")
    first, last = np.mean([curve[s] for s in (1, 2, 3)]), np.mean([curve[s] for s in (38, 39, 40)])
    print(f"demo loss {first:.3f} -> {last:.3f}")
    assert last < 0.6 * first
    assert summary["step"] == 40 and (tmp_path / "run" / "loss_curve.png").is_file()
    assert list((tmp_path / "run" / "tensorboard").iterdir())
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {"lr", "grad_norm", "frames_per_s", "mfu", "stream_accuracy/7"} <= set(records[0])
    assert any("eval/loss" in r for r in records)


def test_restart_resumes_bit_identically(demo_root, tmp_path):
    common = ["train.log_every=1", "train.eval_every=100", "train.checkpoint_every=3", "data.workers=0"]
    train(demo_config(demo_root, f"run_dir={tmp_path}/a", "train.steps=6", *common), progress=False)
    train(demo_config(demo_root, f"run_dir={tmp_path}/b", "train.steps=3", *common), progress=False)
    assert RunCheckpoints(tmp_path / "b", 3).latest_step() == 3
    train(demo_config(demo_root, f"run_dir={tmp_path}/b", "train.steps=6", *common), progress=False)
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert [a[s] for s in (4, 5, 6)] == [b[s] for s in (4, 5, 6)]  # bit-identical


def test_restore_onto_another_mesh(demo_root, tmp_path):
    common = ["train.log_every=1", "train.eval_every=100", "train.checkpoint_every=2"]
    train(demo_config(demo_root, f"run_dir={tmp_path}/r", "train.steps=2", "mesh.data=2", "mesh.fsdp=4", *common),
          progress=False)
    train(demo_config(demo_root, f"run_dir={tmp_path}/same", "train.steps=2", "mesh.data=2", "mesh.fsdp=4",
                      *common), progress=False)
    cfg = demo_config(demo_root, f"run_dir={tmp_path}/r", "train.steps=3", "mesh.data=8", "mesh.fsdp=1", *common)
    # Restored params on the 8x1 mesh equal the 2x4 ones, value for value.
    tx = make_optimizer(cfg.train)
    mesh = make_mesh(cfg.mesh)
    abstract = abstract_state(abstract_model(cfg.model, cfg.mesh.rules)[1], tx)
    target = with_shardings(abstract, train_state_shardings(abstract, mesh, cfg.mesh.rules))
    ckpts = RunCheckpoints(tmp_path / "r", 3)
    restored = ckpts.restore_state(2, target)
    ckpts.close()
    assert restored.params["embed"][...].sharding.mesh.shape["data"] == 8
    other = RunCheckpoints(tmp_path / "same", 3)
    original = other.restore_state(2, with_shardings(abstract, train_state_shardings(
        abstract, make_mesh(demo_config(demo_root, "mesh.data=2", "mesh.fsdp=4").mesh), cfg.mesh.rules)))
    other.close()
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), restored, original)
    # ... and the next step's loss equals continuing on the original mesh.
    train(cfg, progress=False)
    train(demo_config(demo_root, f"run_dir={tmp_path}/same", "train.steps=3", "mesh.data=2", "mesh.fsdp=4",
                      *common), progress=False)
    np.testing.assert_allclose(losses(tmp_path / "r")[3], losses(tmp_path / "same")[3], rtol=1e-6)


def test_gradient_accumulation_equals_one_big_batch():
    cfg = tiny_config()
    mesh = make_mesh(cfg.mesh, jax.devices()[:1])
    tx = make_optimizer(cfg.train)
    graphdef, params, shardings = init_model(cfg.model, mesh, cfg.mesh.rules)
    abstract = abstract_state(abstract_model(cfg.model, cfg.mesh.rules)[1], tx)
    state_sh = train_state_shardings(abstract, mesh, cfg.mesh.rules)
    b = packed_batch(nnx.merge(graphdef, params).vocab, cfg.model.continuous_dim, rows=4)
    batch = {"ids": b.ids, "segment_ids": b.segment_ids, "positions": b.positions, "loss_mask": b.loss_mask}
    results = []
    for accum in (1, 2, 4):
        step = jax.jit(make_train_step(graphdef, None, tx, learning_rate(cfg.train), accum))
        state, metrics = step(init_state(params, tx, state_sh), None, batch)
        results.append((state, metrics))
    for state, metrics in results[1:]:
        np.testing.assert_allclose(float(metrics["loss"]), float(results[0][1]["loss"]), rtol=1e-5)
        np.testing.assert_allclose(float(metrics["grad_norm"]), float(results[0][1]["grad_norm"]), rtol=1e-5)
        jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6),
                     state.opt_state, results[0][0].opt_state)
