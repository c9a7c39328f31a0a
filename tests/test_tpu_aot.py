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
from bagpiper_jax.model.flops import train_flops_per_frame
from bagpiper_jax.sharding import make_mesh
from bagpiper_jax.train.aot import device_memory_gib, tpu_devices
from bagpiper_jax.train.memory_plan import largest_fitting, plan
from bagpiper_jax.train.program import build_program
from bagpiper_jax.train.trainable import STAGE1_PATTERNS

CONFIGS = Path(__file__).resolve().parent.parent / "configs"

needs_libtpu = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None, reason='libtpu is not installed (pip install "jax[tpu]==<jax version>")'
)


SLICES = [("8b_v5p256.yaml", 128, ()), ("8b_v6e256.yaml", 256, ())] + [
    (f"8b_stage{stage}.yaml", chips, overrides)
    for stage in ("1_warmup", "2_pretrain", "3_sft")
    for chips, overrides in ((128, ()), (256, ("mesh.tensor=2", "train.peak_flops=918e12")))  # v5p-256, v6e-256
]


@pytest.mark.parametrize("name, chips, overrides", SLICES)
def test_pod_configs_are_the_8b_model_with_a_1m_frame_batch(name, chips, overrides):
    """The slice configs repeat configs/8b.yaml's model and may only tune the kernel and
    memory settings: keep them in sync. The recipe's stage configs start from the v5p-256
    one (``base``) and run on v6e-256 with the overrides the README gives."""
    cfg, base = load_config(CONFIGS / name, list(overrides)), load_config(CONFIGS / "8b.yaml")
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


def test_stage_configs_follow_the_reference_recipe():
    stage1, stage2, stage3 = (
        load_config(CONFIGS / f"8b_stage{n}.yaml").train for n in ("1_warmup", "2_pretrain", "3_sft")
    )
    assert stage1.trainable == STAGE1_PATTERNS
    assert (stage1.steps, stage1.lr, stage1.final_lr_ratio) == (10_000, 5e-4, 1.0)
    assert stage2 == dataclasses.replace(load_config(CONFIGS / "8b_v5p256.yaml").train, continue_data=True)
    assert (stage2.steps, stage2.lr, stage2.warmup_steps, stage2.final_lr_ratio) == (600_000, 1e-4, 5000, 0.3)
    assert (stage3.steps, stage3.lr, stage3.trainable, stage3.continue_data) == (50_000, 1e-5, ("*",), False)


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


def test_plan_search_finds_the_largest_fitting_size_with_few_compiles():
    calls = []

    def fits_up_to(largest):
        def fits(n):
            calls.append(n)
            return n <= largest

        return fits

    assert largest_fitting(fits_up_to(5)) == 5 and calls == [1, 2, 4, 8, 6, 5]  # doubling, then bisection
    calls.clear()
    assert largest_fitting(fits_up_to(5), limit=3) == 3 and calls == [3]  # the previous policy's size fits
    calls.clear()
    assert largest_fitting(fits_up_to(5), limit=8) == 5 and calls == [8, 1, 4, 6, 5]
    assert largest_fitting(fits_up_to(0)) == 0 and largest_fitting(fits_up_to(0), limit=1) == 0


@needs_libtpu
@pytest.mark.slow  # ~1-3 min: six XLA:TPU compiles of the tiny step
def test_plan_gives_each_remat_policy_its_largest_batch_and_an_mfu_estimate():
    cfg = load_config(
        CONFIGS / "tiny.yaml",
        ["runtime.dtype=bfloat16", "mesh.fsdp=4", "data.row_frames=256", "data.batch_rows=8", "model.layers=4"],
    )
    found = plan(cfg, tpu_devices("v5p:2x2x1"), encoder=False, policies=("full", "dots"), max_rows_per_shard=2)
    assert [(p["remat"], p["rows_per_shard"]) for p in found.frontier] == [("full", 2), ("dots", 2)]
    full, dots = found.frontier
    assert (full["batch_rows"], full["grad_accum"], full["frames_per_chip"]) == (8, 1, 512)
    assert full["total_gib"] < dots["total_gib"] < found.budget_gib == round(0.9 * 95, 2)
    # XLA's FLOPs count every layer (a scanned layer would count once) and full remat recomputes more.
    model_flops = train_flops_per_frame(cfg.model, 256) * 8 * 256 / 4
    assert model_flops < dots["xla_flops_per_chip"] < full["xla_flops_per_chip"] < 1.5 * model_flops
    assert 0 < full["mfu_estimate"] <= dots["mfu_estimate"] < 1
