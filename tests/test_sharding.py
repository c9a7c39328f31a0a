"""Sharded loss and gradients on a 2x2x2 (data, fsdp, tensor) mesh equal one device."""

import jax
import numpy as np
import pytest
from flax import nnx
from helpers import packed_batch, tiny_config
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from bagpiper_jax.audio_encoder.pieces import Continuous
from bagpiper_jax.config import ConfigError, MeshConfig
from bagpiper_jax.model.create import init_model
from bagpiper_jax.sharding import logical_to_spec, make_mesh
from bagpiper_jax.vocab import Vocab


def run(cfg, devices, batch, continuous):
    """Loss and gradients jitted with the params' and the batch's shardings on ``devices``."""
    mesh, rules = make_mesh(cfg.mesh, devices), cfg.mesh.rules
    graphdef, params, shardings = init_model(cfg.model, cfg.runtime, mesh, rules, seed=3)

    def named(*axes):
        return NamedSharding(mesh, logical_to_spec(axes, rules))

    grad_fn = jax.value_and_grad(lambda p, b, c: nnx.merge(graphdef, p).loss(b, c), has_aux=True)
    step = jax.jit(
        grad_fn,
        in_shardings=(
            shardings,
            batch.shardings(mesh, rules),
            Continuous(named("activation_batch", None, None), named("activation_batch", None)),
        ),
        out_shardings=((named(), named()), shardings),
    )
    with jax.set_mesh(mesh):
        (loss, metrics), grads = step(params, batch, continuous)
    return params, loss, metrics, grads


@pytest.fixture(scope="module")
def one_and_eight():
    cfg8 = tiny_config("mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2", "runtime.loss_chunk=32")
    cfg1 = tiny_config("runtime.loss_chunk=32")
    batch, continuous = packed_batch(Vocab.from_config(cfg1.model), cfg1.model.continuous_dim, rows=4)
    return cfg8, run(cfg1, jax.devices()[:1], batch, continuous), run(cfg8, jax.devices(), batch, continuous)


def host(tree):
    return jax.tree.map(lambda x: np.asarray(x), tree)


def test_loss_and_grads_match_single_device(one_and_eight):
    _, (p1, loss1, m1, g1), (p8, loss8, m8, g8) = one_and_eight
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), host(p1), host(p8))  # same init
    np.testing.assert_allclose(float(loss8), float(loss1), rtol=1e-5, atol=1e-5)
    for k in m1:
        np.testing.assert_allclose(np.asarray(m8[k]), np.asarray(m1[k]), rtol=1e-5, atol=1e-5)
    for (path, a), (_, b) in zip(nnx.to_flat_state(host(g1)), nnx.to_flat_state(host(g8))):
        np.testing.assert_allclose(b[...], a[...], rtol=1e-5, atol=1e-5, err_msg=str(path))


def test_param_shardings_follow_rules(one_and_eight):
    cfg, _, (params, _, _, grads) = one_and_eight
    expected = {
        ("embed",): P("tensor", "fsdp"),
        ("lm_head",): P("fsdp", "tensor"),
        ("decoder", "blocks", "attn", "q_proj"): P(None, "fsdp", "tensor", None),
        ("decoder", "blocks", "attn", "o_proj"): P(None, "tensor", None, "fsdp"),
        ("decoder", "blocks", "mlp", "down"): P(None, "tensor", "fsdp"),
        ("decoder", "blocks", "attn_norm", "scale"): P(None, None),
    }
    flat = dict(nnx.to_flat_state(params))
    for path, spec in expected.items():
        assert flat[path][...].sharding.spec == spec, path
    for path, var in nnx.to_flat_state(params):  # every param agrees with its logical axes
        want = logical_to_spec(var.get_metadata()["out_sharding"], cfg.mesh.rules)
        assert var[...].sharding.spec == want, path
    for path, var in nnx.to_flat_state(grads):
        assert var[...].sharding.spec == flat[path][...].sharding.spec, path


def test_logical_rules_never_reuse_a_mesh_axis():
    rules = (("a", ("data", "fsdp")), ("b", "fsdp"), ("c", None))
    assert logical_to_spec(("a", "b", "c", None), rules) == P(("data", "fsdp"), None, None, None)


def test_mesh_errors_name_the_problem():
    with pytest.raises(ConfigError, match="needs 12 devices"):
        make_mesh(MeshConfig(data=3, fsdp=4, tensor=1))
    with pytest.raises(ConfigError, match="do not divide"):
        make_mesh(MeshConfig(data=3, fsdp=-1, tensor=1))
    with pytest.raises(ConfigError, match="at most one mesh axis"):
        MeshConfig(data=-1, fsdp=-1)
    assert make_mesh(MeshConfig(data=2, fsdp=-1, tensor=2)).shape == {"data": 2, "fsdp": 2, "tensor": 2}
