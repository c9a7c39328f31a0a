"""The training recipe on the demo: a stage-1 run (decoder frozen) that learns, is profiled
and accounts its step time; a stage-2 run chained from it; non-finite batches skipped and,
too many in a row, stopping the run."""

import dataclasses
import json

import jax
import numpy as np
import pytest
from helpers import demo_config

from bagpiper_jax.audio_encoder.frozen import mel_bins, tokens_for
from bagpiper_jax.checkpoint.frozen_modules import load_frozen_tower
from bagpiper_jax.checkpoint.model_checkpoint import ParamsSource
from bagpiper_jax.checkpoint.run import RunCheckpoints
from bagpiper_jax.config import ConfigError
from bagpiper_jax.data.pipeline import build_input
from bagpiper_jax.model.create import init_model
from bagpiper_jax.sharding import make_mesh, with_shardings
from bagpiper_jax.train.chaining import initial_state
from bagpiper_jax.train.nonfinite import NonFiniteError
from bagpiper_jax.train.program import build_program
from bagpiper_jax.train.step_timing import PHASES
from bagpiper_jax.train.trainable import STAGE1_PATTERNS
from bagpiper_jax.train.trainer import train
from bagpiper_jax.vocab import Vocab

STAGE1 = "train.trainable=[" + ",".join(STAGE1_PATTERNS) + "]"


def records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def train_records(run_dir) -> dict[int, dict]:
    return {r["step"]: r for r in records(run_dir) if "loss" in r}


def param(params, dotted: str) -> np.ndarray:
    for key in dotted.split("."):
        params = params[key]
    return np.asarray(params.get_value())


def data_input(cfg):
    tower = load_frozen_tower(cfg, make_mesh(cfg.mesh))
    return build_input(cfg.data, Vocab.from_config(cfg.model), tokens_for(tower), mel_bins(tower))


@pytest.fixture(scope="module")
def stage1(demo_root, tmp_path_factory):
    """A stage-1 demo run: 30 steps with only the stage-1 subset trainable, steps 2..3 profiled."""
    run_dir = tmp_path_factory.mktemp("stage1")
    overrides = [
        STAGE1,
        "train.steps=30",
        "train.log_every=3",
        "train.eval_every=30",
        "train.checkpoint_every=15",
        "train.warmup_steps=3",
        "train.decay_steps=30",
        "train.profile_steps=[2, 3]",
    ]
    train(demo_config(demo_root, f"run_dir={run_dir}", *overrides), progress=False)
    return run_dir


def test_stage1_subset_learns_and_its_frozen_layers_stay_as_initialised(demo_root, stage1):
    logged = train_records(stage1)
    first, last = np.mean([logged[s]["loss"] for s in (3, 6)]), np.mean([logged[s]["loss"] for s in (27, 30)])
    print(f"stage-1 demo loss {first:.3f} -> {last:.3f}")
    assert last < 0.8 * first
    cfg = demo_config(demo_root)
    trainable_params = logged[30]["trainable_params"]
    _, init_params, _ = init_model(cfg.model, cfg.runtime, make_mesh(cfg.mesh), cfg.mesh.rules, cfg.seed)
    saved = ParamsSource(stage1)
    assert saved.step == 30
    for name in ("decoder.blocks.mlp.up", "decoder.blocks.attn.q_proj", "decoder.blocks.attn_norm.scale"):
        np.testing.assert_array_equal(saved.read(name), param(init_params, name))
    assert not np.array_equal(saved.read("lm_head"), param(init_params, "lm_head"))
    assert trainable_params == sum(np.prod(shape) for k, (shape, _) in saved.params.items() if k[:7] != "decoder")


def test_profile_steps_write_a_trace_for_tensorboard(stage1):
    traces = list((stage1 / "tensorboard" / "plugins" / "profile").glob("*/*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0


def test_step_time_fields_sum_to_the_step_time(stage1):
    logged = train_records(stage1)
    fields = [f"time/{phase}_s" for phase in PHASES]
    for step, record in logged.items():
        assert set(fields) <= set(record) and 0 < record["goodput"] <= 1 and 0 < record["goodput_run"] <= 1
        if step > 3:  # steps 1..3 also started and stopped the profiler
            assert sum(record[f] for f in fields) == pytest.approx(record["step_s"], rel=0.05), record
    assert logged[15]["time/checkpoint_s"] > 0 and logged[30]["time/eval_s"] > 0 and logged[12]["time/eval_s"] == 0


def test_stage2_starts_from_stage1_params_with_a_fresh_optimizer_at_step_0(demo_root, stage1, tmp_path):
    common = [f"train.init_from={stage1}", "train.log_every=1", "train.eval_every=100", "train.checkpoint_every=2"]
    cfg = demo_config(demo_root, f"run_dir={tmp_path}/s2", "train.continue_data=true", "train.steps=2", *common)
    program = build_program(cfg, make_mesh(cfg.mesh), load_frozen_tower(cfg, make_mesh(cfg.mesh)))
    data = data_input(cfg)
    state = initial_state(cfg, program, data)
    assert int(state.step) == 0 and program.trainable.everything
    saved = ParamsSource(stage1)
    for name in ("lm_head", "decoder.blocks.mlp.up"):
        np.testing.assert_array_equal(param(state.params, name), saved.read(name))
    moments = jax.tree.leaves(state.opt_state)
    assert len(moments) > 2 * len(saved.params) and all(not np.any(np.asarray(x)) for x in moments)  # fresh
    # continue_data: the first batch is the one stage 1 would have drawn next.
    stage1_cfg = demo_config(demo_root, STAGE1)
    stage1_data = data_input(stage1_cfg)
    ckpts = RunCheckpoints(stage1 / "checkpoints", 3)
    ckpts.restore_data(30, stage1_data)
    ckpts.close()
    np.testing.assert_array_equal(next(data).ids, next(stage1_data).ids)
    # Without continue_data the data starts anew.
    restart_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, continue_data=False))
    restarted = data_input(restart_cfg)
    initial_state(restart_cfg, program, restarted)
    np.testing.assert_array_equal(next(restarted).ids, next(data_input(cfg)).ids)
    # The data must define the same stream to be continued.
    other = demo_config(demo_root, "train.continue_data=true", "data.shuffle_seed=5", *common)
    with pytest.raises(ConfigError, match=r"data.shuffle_seed=5 \(was 0\)"):
        initial_state(other, program, data_input(other))

    # The run: steps 1..2 from the stage-1 params (its loss starts where stage 1 ended) ...
    train(cfg, progress=False)
    stage2 = train_records(tmp_path / "s2")
    assert sorted(stage2) == [1, 2] and stage2[1]["lr"] == 0.0  # a fresh schedule, from step 0
    assert stage2[1]["loss"] < train_records(stage1)[3]["loss"]
    # ... and a restart resumes the stage from its own checkpoint, not from init_from.
    train(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=3)), progress=False)
    assert sorted(train_records(tmp_path / "s2")) == [1, 2, 3]


def test_non_finite_batches_are_skipped_and_too_many_in_a_row_stop_the_run(demo_root, tmp_path):
    cfg = demo_config(
        demo_root,
        f"run_dir={tmp_path}",
        "train.steps=8",
        "train.log_every=1",
        "train.eval_every=100",
        "train.checkpoint_every=1",
        "train.keep_checkpoints=10",
        "train.max_bad_steps=2",
    )

    def poison(step, batch):  # steps 2, 4 and 5 get a NaN loss (and NaN gradients)
        return (
            dataclasses.replace(batch, loss_mask=np.full_like(batch.loss_mask, np.nan)) if step in (2, 4, 5) else batch
        )

    with pytest.raises(NonFiniteError, match=r"2 steps in a row \(steps 4..5\) had a non-finite loss or gradient"):
        train(cfg, progress=False, batch_hook=poison)
    ckpts = RunCheckpoints(tmp_path / "checkpoints", 10)
    assert ckpts.all_steps() == [1, 2, 3, 4]  # the run stopped at step 5, before saving it
    program = build_program(cfg, make_mesh(cfg.mesh), load_frozen_tower(cfg, make_mesh(cfg.mesh)))
    target = with_shardings(program.abstract, program.state_shardings)
    states = {step: jax.device_get(ckpts.restore_state(step, target)) for step in (1, 2, 3, 4)}
    ckpts.close()

    def same(a, b):
        return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

    assert same(states[2].params, states[1].params) and same(states[2].opt_state, states[1].opt_state)  # skipped
    assert not same(states[3].params, states[2].params)  # ... and the run went on
    assert same(states[4].params, states[3].params) and int(states[4].step) == 4
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(states[4]))  # the last checkpoint is finite
    skipped = [json.loads(line) for line in (tmp_path / "nonfinite_steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in skipped] == [2, 4, 5] and all(s["data_position"] for s in skipped)
    logged = train_records(tmp_path)
    assert (logged[2]["bad_steps"], logged[3]["bad_steps"], logged[4]["bad_steps_total"]) == (1, 0, 2)
    assert logged[3]["goodput"] > 0 and logged[2]["goodput"] == 0  # a skipped step is not productive
