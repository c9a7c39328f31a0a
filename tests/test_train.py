"""Training: learning on the demo corpus, exact resume, other-mesh restore, gradient accumulation."""

import json
import shutil

import jax
import numpy as np
from flax import nnx
from helpers import demo_config, packed_batch, tiny_config

from bagpiper_jax.checkpoint.run import RunCheckpoints
from bagpiper_jax.model.create import abstract_model, init_model
from bagpiper_jax.sharding import make_mesh, with_shardings
from bagpiper_jax.train.optimizer import learning_rate, make_optimizer
from bagpiper_jax.train.state import abstract_state, init_state, train_state_shardings
from bagpiper_jax.train.step import make_train_step
from bagpiper_jax.train.trainer import train


def losses(run_dir):
    return {
        r["step"]: r["loss"]
        for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
        if "loss" in r
    }


def test_loss_falls_and_a_restart_resumes_bit_identically(demo_root, tmp_path):
    common = [
        "train.steps=48",
        "train.log_every=1",
        "train.eval_every=48",
        "train.checkpoint_every=24",
        "train.warmup_steps=5",
        "train.decay_steps=48",
    ]
    summary = train(demo_config(demo_root, f"run_dir={tmp_path}/a", *common), progress=False)
    curve = losses(tmp_path / "a")
    first, last = np.mean([curve[s] for s in (1, 2, 3)]), np.mean([curve[s] for s in (46, 47, 48)])
    print(f"demo loss {first:.3f} -> {last:.3f}")
    assert last < 0.6 * first
    assert summary["step"] == 48 and (tmp_path / "a" / "loss_curve.png").is_file()
    assert list((tmp_path / "a" / "tensorboard").iterdir())
    records = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert {"lr", "grad_norm", "frames_per_s", "mfu", "stream_accuracy/7"} <= set(records[0])
    assert any("eval/loss" in r for r in records)
    # A run holding only the step-24 checkpoint (in a train.checkpoint_dir outside its run
    # directory) resumes and reproduces steps 25..48 exactly.
    shutil.copytree(tmp_path / "a" / "checkpoints" / "24", tmp_path / "b_ckpts" / "24")
    train(
        demo_config(demo_root, f"run_dir={tmp_path}/b", f"train.checkpoint_dir={tmp_path}/b_ckpts", *common),
        progress=False,
    )
    assert (tmp_path / "b_ckpts" / "48").is_dir() and not (tmp_path / "b" / "checkpoints").exists()
    resumed = losses(tmp_path / "b")
    assert min(resumed) == 25
    assert [resumed[s] for s in range(25, 49)] == [curve[s] for s in range(25, 49)]  # bit-identical


def test_restore_onto_another_mesh(demo_root, tmp_path):
    common = ["train.log_every=1", "train.eval_every=100", "train.checkpoint_every=2"]
    wide = ["mesh.data=2", "mesh.fsdp=4"]
    train(demo_config(demo_root, f"run_dir={tmp_path}/r", "train.steps=2", *wide, *common), progress=False)
    shutil.copytree(tmp_path / "r", tmp_path / "same")
    cfg = demo_config(demo_root, f"run_dir={tmp_path}/r", "train.steps=3", "mesh.data=8", "mesh.fsdp=1", *common)
    # The checkpoint restores onto the 8x1 mesh with the values it has on the 2x4 one.
    tx = make_optimizer(cfg.train)
    abstract = abstract_state(abstract_model(cfg.model, cfg.runtime, cfg.mesh.rules)[1], tx)
    ckpts = RunCheckpoints(tmp_path / "r" / "checkpoints", 3)
    restored = [
        ckpts.restore_state(
            2, with_shardings(abstract, train_state_shardings(abstract, make_mesh(c.mesh), cfg.mesh.rules))
        )
        for c in (cfg, demo_config(demo_root, *wide))
    ]
    ckpts.close()
    assert restored[0].params["embed"][...].sharding.mesh.shape["data"] == 8
    assert restored[1].params["embed"][...].sharding.mesh.shape["data"] == 2
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), *restored)
    # ... and the next step's loss equals continuing on the original mesh.
    train(cfg, progress=False)
    train(demo_config(demo_root, f"run_dir={tmp_path}/same", "train.steps=3", *wide, *common), progress=False)
    np.testing.assert_allclose(losses(tmp_path / "r")[3], losses(tmp_path / "same")[3], rtol=1e-6)


def test_gradient_accumulation_equals_one_big_batch():
    cfg = tiny_config()
    mesh = make_mesh(cfg.mesh, jax.devices()[:1])
    tx = make_optimizer(cfg.train)
    graphdef, params, _ = init_model(cfg.model, cfg.runtime, mesh, cfg.mesh.rules)
    abstract = abstract_state(abstract_model(cfg.model, cfg.runtime, cfg.mesh.rules)[1], tx)
    state_sh = train_state_shardings(abstract, mesh, cfg.mesh.rules)
    batch, _ = packed_batch(nnx.merge(graphdef, params).vocab, cfg.model.continuous_dim, rows=4)
    results = []
    for accum in (1, 2, 4):
        step = jax.jit(make_train_step(graphdef, None, tx, learning_rate(cfg.train), accum))
        state, metrics = step(init_state(params, tx, state_sh), None, batch)
        results.append((state, metrics))
    for state, metrics in results[1:]:
        np.testing.assert_allclose(float(metrics["loss"]), float(results[0][1]["loss"]), rtol=1e-5)
        np.testing.assert_allclose(float(metrics["grad_norm"]), float(results[0][1]["grad_norm"]), rtol=1e-5)
        jax.tree.map(
            lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6),
            state.opt_state,
            results[0][0].opt_state,
        )


def test_a_mixture_logs_loss_and_eval_per_source(demo_root, tmp_path):
    demo = demo_root / "demo"
    sources = (
        f"data.sources=[{{name: train, prepared: {demo}/prepared, weight: 3}}, "
        f"{{name: held, prepared: {demo}/heldout, weight: 1}}]"
    )
    cfg = demo_config(
        demo_root,
        f"run_dir={tmp_path}",
        'data.prepared=""',
        'data.eval_prepared=""',
        sources,
        "train.steps=2",
        "train.log_every=1",
        "train.eval_every=2",
        "train.checkpoint_every=2",
    )
    train(cfg, progress=False)
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    step = records[0]
    assert step["source/train/frames"] > step["source/held/frames"] > 0  # weights 3:1
    assert step["source/train/loss"] > 0 and step["source/held/loss"] > 0
    evaluation = next(r for r in records if "eval/loss" in r)
    assert {"eval/train/loss", "eval/held/loss", "eval/held/stream_accuracy/0"} <= set(evaluation)
