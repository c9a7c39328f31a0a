"""AOT compile of the train step for a real TPU topology from this CPU host (libtpu describes
the chips, nothing runs): catches sharding mistakes (fsdp x tensor, Splash attention's
shard_map, the frozen tower) without a TPU."""

import dataclasses
import importlib.util
from pathlib import Path

import jax
import pytest
from audio_encoder_testing import TINY

from bagpiper_jax.audio_encoder.config import AudioEncoderConfig
from bagpiper_jax.audio_encoder.frozen import FrozenTower
from bagpiper_jax.config import load_config
from bagpiper_jax.sharding import make_mesh
from bagpiper_jax.train.aot import device_memory_gib, tpu_devices
from bagpiper_jax.train.program import build_program

CONFIGS = Path(__file__).resolve().parent.parent / "configs"

needs_libtpu = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None, reason='libtpu is not installed (pip install "jax[tpu]==<jax version>")'
)


@pytest.mark.parametrize("name, chips", [("8b_v5p256.yaml", 128), ("8b_v6e256.yaml", 256)])
def test_pod_configs_are_the_8b_model_with_a_1m_frame_batch(name, chips):
    """The slice configs repeat configs/8b.yaml's model (the loader has no includes) and may
    only tune the kernel and memory settings: keep them in sync."""
    cfg, base = load_config(CONFIGS / name), load_config(CONFIGS / "8b.yaml")
    tunable = (
        "remat",
        "attention",
        "splash_block_q",
        "splash_block_kv",
        "splash_block_kv_compute",
        "splash_fused_bwd",
        "loss_chunk",
    )
    assert cfg.model == base.model
    assert dataclasses.replace(cfg.runtime, **{f: getattr(base.runtime, f) for f in tunable}) == base.runtime
    assert cfg.runtime.attention == "splash"
    assert cfg.data.batch_rows * cfg.data.row_frames == 2**20
    assert cfg.data.batch_rows % (chips // cfg.mesh.tensor) == 0  # whole rows per data x fsdp shard


@needs_libtpu
@pytest.mark.slow  # 20-40 s: XLA:TPU compile on the CPU host
def test_tiny_train_step_compiles_for_v5p_with_fsdp_tensor_and_splash():
    cfg = load_config(
        CONFIGS / "tiny.yaml",
        [
            "runtime.attention=splash",
            "runtime.splash_block_q=128",
            "runtime.splash_block_kv=128",
            "runtime.splash_block_kv_compute=128",
            "runtime.dtype=bfloat16",
            "model.continuous_dim=16",
            "mesh.fsdp=2",
            "mesh.tensor=2",
            "data.row_frames=256",
            "data.batch_rows=4",
            "data.max_pieces_per_row=2",
            "data.piece_frames=200",
            "train.grad_accum=2",
        ],
    )
    devices = tpu_devices("v5p:2x2x1")
    assert len(devices) == 4 and devices[0].platform == "tpu"
    mesh = make_mesh(cfg.mesh, devices)
    tower = AudioEncoderConfig(**TINY)  # output_dim 16 = model.continuous_dim; windows of 200 frames
    # conftest sets "highest" matmul precision; Mosaic rejects fp32 contraction on bf16 operands.
    with jax.default_matmul_precision("default"):
        compiled, _ = build_program(cfg, mesh, FrozenTower.abstract(mesh, cfg.mesh.rules, tower)).compile()
    assert "tpu_custom_call" in compiled.as_text()  # the Splash (Mosaic) kernel, not XLA attention
    memory = device_memory_gib(compiled)
    assert 0 < memory["total_gib"] < 1
    assert memory["alias_gib"] > 0  # the donated train state is updated in place


@needs_libtpu
def test_unknown_topology_is_a_clear_error():
    with pytest.raises(RuntimeError, match="cannot describe TPU topology 'v5p:3x3x3'"):
        tpu_devices("v5p:3x3x3")
