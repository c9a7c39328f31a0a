"""Frozen params (``train.trainable``), the non-finite step guard and the step-time split,
on the tiny model's train step."""

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import packed_batch, tiny_config

from bagpiper_jax.config import ConfigError
from bagpiper_jax.model.create import abstract_model, init_model
from bagpiper_jax.model.flops import param_count, train_flops_per_frame
from bagpiper_jax.sharding import make_mesh
from bagpiper_jax.train.nonfinite import NonFiniteError, NonFiniteGuard
from bagpiper_jax.train.optimizer import learning_rate, make_optimizer
from bagpiper_jax.train.state import abstract_state, init_state, train_state_shardings
from bagpiper_jax.train.step import make_train_step
from bagpiper_jax.train.step_timing import StepTimer
from bagpiper_jax.train.trainable import STAGE1_PATTERNS, TrainableParams, tree_bytes, tree_size

LAYER_MATMULS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate", "up", "down")


@dataclasses.dataclass
class Setup:
    graphdef: nnx.GraphDef
    params: nnx.State
    trainable: TrainableParams
    state_abstract: object
    step: object  # jitted train step (state not donated)
    init: object  # () -> a fresh step-0 state


@functools.cache  # one compiled step per pattern set; tests never donate or change its params
def setup(patterns: tuple[str, ...]) -> Setup:
    cfg = tiny_config()
    mesh = make_mesh(cfg.mesh, jax.devices()[:1])
    tx = make_optimizer(cfg.train)
    graphdef, params, _ = init_model(cfg.model, cfg.runtime, mesh, cfg.mesh.rules)
    abstract_params = abstract_model(cfg.model, cfg.runtime, cfg.mesh.rules)[1]
    trainable = TrainableParams.select(patterns, abstract_params)
    abstract = abstract_state(abstract_params, tx, trainable)
    shardings = train_state_shardings(abstract, mesh, cfg.mesh.rules)
    step = jax.jit(make_train_step(graphdef, None, tx, learning_rate(cfg.train), 1, 1, trainable))
    return Setup(graphdef, params, trainable, abstract, step, lambda: init_state(params, tx, shardings, trainable))


def flat(state) -> dict[str, np.ndarray]:
    return {".".join(map(str, k)): np.asarray(v.get_value()) for k, v in nnx.to_flat_state(state)}


def batches(graphdef, params, n):
    vocab = nnx.merge(graphdef, params).vocab
    return [packed_batch(vocab, 32, rows=2, seed=seed)[0] for seed in range(n)]


def test_frozen_params_stay_bit_identical_and_only_trainable_ones_have_optimizer_state():
    s = setup(STAGE1_PATTERNS)
    full = setup(("*",))
    before = flat(s.params)
    state = s.init()
    for batch in batches(s.graphdef, s.params, 3):
        state, metrics = s.step(state, None, batch)
        assert bool(metrics["finite"])
    after = flat(state.params)
    frozen = {".".join(p) for p in s.trainable.frozen_paths}
    assert frozen == {k for k in before if k.startswith("decoder.")}  # the stage-1 subset
    for name in before:
        if name in frozen:
            assert np.array_equal(before[name], after[name]), name  # bit-identical
        elif not name.startswith("adaptor_"):  # no continuous input here: the adaptor gets no gradient
            assert not np.array_equal(before[name], after[name]), name

    # Adam's two moments for each trainable param and nothing for the frozen ones.
    counts = s.trainable.counts(s.params)
    shapes = [x.shape for x in jax.tree.leaves(s.state_abstract.opt_state) if x.ndim]
    trainable_shapes = [x.shape for x in jax.tree.leaves(s.trainable.split(s.params)[0])]
    assert sorted(shapes) == sorted(trainable_shapes * 2)
    saved = tree_bytes(full.state_abstract.opt_state) - tree_bytes(s.state_abstract.opt_state)
    assert saved == 2 * 4 * counts["frozen_params"] > 0  # fp32 mu and nu of every frozen param
    assert counts["trainable_params"] + counts["frozen_params"] == tree_size(s.params)


def test_grad_norm_and_clipping_cover_the_trainable_params_only():
    s = setup(STAGE1_PATTERNS)
    batch = batches(s.graphdef, s.params, 1)[0]
    _, metrics = s.step(s.init(), None, batch)
    grads = jax.grad(lambda p: nnx.merge(s.graphdef, p).loss(batch)[0])(s.params)
    squares = {k: float(np.sum(np.square(v, dtype=np.float64))) for k, v in flat(grads).items()}
    trainable = {".".join(p) for p in s.trainable.paths}
    np.testing.assert_allclose(
        float(metrics["grad_norm"]), np.sqrt(sum(v for k, v in squares.items() if k in trainable)), rtol=1e-5
    )
    assert float(metrics["grad_norm"]) < np.sqrt(sum(squares.values()))


def _dot_output_shapes(jaxpr) -> list[tuple[int, ...]]:
    """Output shapes of every dot_general in ``jaxpr`` and the jaxprs nested in it."""
    shapes = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            shapes.append(tuple(eqn.outvars[0].aval.shape))
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else (value,):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    shapes += _dot_output_shapes(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    shapes += _dot_output_shapes(sub)
    return shapes


def test_frozen_layers_get_no_weight_gradient_matmuls():
    """The backward pass runs through the frozen layers (the embedding table below them
    trains) but computes no gradient of their weights: no matmul yields a layer weight's
    shape. With every param trainable, each layer weight has its gradient matmul."""
    batch, weight_shapes = None, None
    counts = {}
    for patterns in (("*",), STAGE1_PATTERNS):
        s = setup(patterns)
        batch = batch or batches(s.graphdef, s.params, 1)[0]
        layer = dict(nnx.to_flat_state(s.params))
        weight_shapes = weight_shapes or {
            tuple(sorted(v.get_value().shape[1:]))
            for k, v in layer.items()
            if k[0] == "decoder" and k[-1] in LAYER_MATMULS
        }
        jaxpr = jax.make_jaxpr(s.step)(s.init(), None, batch)
        counts[patterns] = sum(tuple(sorted(shape)) in weight_shapes for shape in _dot_output_shapes(jaxpr.jaxpr))
    assert counts[STAGE1_PATTERNS] == 0
    assert counts[("*",)] >= len(weight_shapes)


def test_a_non_finite_step_leaves_the_state_unchanged():
    s = setup(("*",))
    good, bad = batches(s.graphdef, s.params, 2)
    bad = dataclasses.replace(bad, loss_mask=bad.loss_mask.at[0].set(jnp.nan))
    state, _ = s.step(s.init(), None, good)
    before = jax.device_get((state.params, state.opt_state))
    state, metrics = s.step(state, None, bad)
    assert not bool(metrics["finite"]) and not np.isfinite(float(metrics["loss"]))
    assert int(state.step) == 2  # the step counts the batch
    jax.tree.map(np.testing.assert_array_equal, before, jax.device_get((state.params, state.opt_state)))
    state, metrics = s.step(state, None, good)
    assert bool(metrics["finite"])
    assert not np.array_equal(before[0]["lm_head"].get_value(), np.asarray(state.params["lm_head"].get_value()))


def test_trainable_patterns_select_by_path_and_reject_typos():
    abstract = abstract_model(tiny_config().model)[1]
    select = TrainableParams.select
    assert {".".join(p) for p in select(("adaptor_*", "final_norm"), abstract).paths} == {
        "adaptor_kernel",
        "adaptor_bias",
        "final_norm.scale",
    }
    decoder = select(("decoder",), abstract)
    assert decoder.paths and all(p[0] == "decoder" for p in decoder.paths)
    assert select(("decoder.blocks.*norm",), abstract).paths == {
        ("decoder", "blocks", n, "scale") for n in ("attn_norm", "mlp_norm")
    } | {("decoder", "blocks", "attn", n, "scale") for n in ("q_norm", "k_norm")}
    assert select(("*",), abstract).everything
    with pytest.raises(ConfigError, match=r"train.trainable: \['lm_haed'\] match no parameter"):
        select(("embed", "lm_haed"), abstract)
    for override, message in (
        ("train.trainable=[]", "train.trainable must list"),
        ("train.profile_steps=[5, 2]", "train.profile_steps must be"),
        ("train.profile_steps=[2]", "train.profile_steps must be"),
        ("train.max_bad_steps=0", "train.max_bad_steps must be positive"),
    ):
        with pytest.raises(ConfigError, match=message):
            tiny_config(override)


def test_flops_of_frozen_layers_leave_out_their_weight_gradients():
    m = tiny_config().model
    pc = param_count(m)
    weights = pc.layers - m.layers * (2 * m.hidden + 2 * m.head_dim)  # the layers' matmul weights
    frozen = {
        f"decoder.blocks.{part}.{name}"
        for part, names in (("attn", LAYER_MATMULS[:4]), ("mlp", LAYER_MATMULS[4:]))
        for name in names
    }
    assert train_flops_per_frame(m, 64) - train_flops_per_frame(m, 64, frozen) == 2 * weights


def test_non_finite_guard_counts_and_stops_after_max_bad_steps_in_a_row(tmp_path):
    guard = NonFiniteGuard(2, tmp_path)
    bad = {"loss": float("nan"), "grad_norm": float("nan")}
    guard.record(1, True, {}, b"[]")
    guard.record(2, False, bad, b'["at 2"]')
    guard.record(3, True, {}, b"[]")
    guard.record(4, False, bad, b'["at 4"]')
    with pytest.raises(NonFiniteError, match=r"2 steps in a row \(steps 4..5\) had a non-finite loss"):
        guard.record(5, False, bad, b'["at 5"]')
    assert guard.window() == {"bad_steps": 3, "bad_steps_total": 3}
    lines = [json.loads(line) for line in (tmp_path / "nonfinite_steps.jsonl").read_text().splitlines()]
    assert [(x["step"], x["data_position"]) for x in lines] == [(2, ["at 2"]), (4, ["at 4"]), (5, ["at 5"])]


def test_step_timer_splits_wall_time_and_goodput():
    now = [0.0]

    def clock():
        return now[0]

    timer = StepTimer(clock)
    now[0] = 10.0  # start-up: unproductive
    timer.restart_window()
    for applied in (True, False):
        for name, seconds in (("data_wait", 0.5), ("host_to_device", 0.1), ("compute", 2.0)):
            with timer.phase(name) as phase:
                now[0] += seconds
        timer.step_done(phase, applied)
    with timer.phase("checkpoint"):
        now[0] += 0.6
    now[0] += 0.2  # logging
    window = timer.window()
    assert window["step_s"] == pytest.approx(3.0)
    assert window["time/compute_s"] == pytest.approx(2.0) and window["time/checkpoint_s"] == pytest.approx(0.3)
    assert window["time/other_s"] == pytest.approx(0.1)
    assert window["goodput"] == pytest.approx(2.0 / 6.0)  # the skipped step's compute is not productive
    assert window["goodput_run"] == pytest.approx(2.0 / 16.0)
