"""Config loading rules, the vocabulary layout, and the exact 8B parameter count."""

import jax
import pytest
import yaml
from helpers import REPO, TINY

from bagpiper_jax.audio_encoder.config import AudioEncoderConfig
from bagpiper_jax.codec.config import XCodecConfig
from bagpiper_jax.config import (
    AudioDecoding,
    ConfigError,
    SegmentDecoding,
    config_from_dict,
    from_dict,
    load_config,
    to_dict,
)
from bagpiper_jax.model.create import abstract_model
from bagpiper_jax.model.flops import param_count, train_flops_per_frame
from bagpiper_jax.vocab import Vocab

BAGPIPER_8B_PARAMS = 8_268_432_384


def test_8b_abstract_parameter_count():
    cfg = load_config(REPO / "configs" / "8b.yaml")
    _, state = abstract_model(cfg.model, cfg.runtime)
    total = sum(x.size for x in jax.tree.leaves(state))
    print(f"8B abstract parameter count: {total:,}")
    assert abs(total - BAGPIPER_8B_PARAMS) <= 0.001 * BAGPIPER_8B_PARAMS
    assert total == param_count(cfg.model).total == BAGPIPER_8B_PARAMS
    assert param_count(cfg.model).per_layer == 192_946_432


def test_8b_vocabulary_layout():
    v = Vocab.from_config(load_config(REPO / "configs" / "8b.yaml").model)
    assert (v.text_offset, v.audio_offset, v.size, v.audio_size) == (256, 152_192, 160_392, 8200)
    assert v.stream_range(7) == (152_192 + 7 * 1025, 160_392)
    assert v.audio_ids([0, 1023], 1).tolist() == [152_192 + 1025 + 1, 152_192 + 1025 + 1024]
    assert v.special_name(3) == "<|eot|>" and v.special_name(200) == "<|unused_200|>"
    with pytest.raises(ValueError, match="codes of stream 2 must lie in"):
        v.audio_ids([1024], 2)


def test_tiny_vocabulary_follows_the_same_rules():
    v = Vocab.from_config(load_config(TINY).model)
    assert (v.text_offset, v.audio_offset, v.stream_block, v.size) == (16, 1040, 65, 1560)
    assert v.text_ids([0, 1023]).tolist() == [16, 1039]
    with pytest.raises(ValueError, match=r"text token ids must lie in \[0, 1024\)"):
        v.text_ids([1024])


def test_flops_per_frame_counts_layers_head_and_attention():
    m = load_config(REPO / "configs" / "8b.yaml").model
    pc = param_count(m)
    norms = m.layers * (2 * m.hidden + 2 * m.head_dim)
    expected = 6 * (pc.layers - norms + pc.lm_head + 7 * m.hidden * 8200) + 12 * m.layers * 4096 * 8192
    assert train_flops_per_frame(m, 8192) == expected


def test_a_config_file_starts_from_its_base_file(tmp_path):
    (tmp_path / "slice").mkdir()
    (tmp_path / "slice" / "pod.yaml").write_text(f"base: {TINY}\nmesh:\n  fsdp: 4\ntrain:\n  lr: 0.5\n  steps: 7\n")
    (tmp_path / "stage.yaml").write_text("base: slice/pod.yaml\ntrain:\n  steps: 9\n  trainable: [embed]\n")
    cfg = load_config(tmp_path / "stage.yaml", ["train.lr=0.25"])
    tiny = load_config(TINY)
    assert cfg.model == tiny.model and cfg.mesh.fsdp == 4 and (cfg.mesh.data, cfg.mesh.tensor) == (1, 1)
    assert (cfg.train.steps, cfg.train.lr, cfg.train.trainable) == (9, 0.25, ("embed",))
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="base loop.yaml includes itself"):
        load_config(tmp_path / "loop.yaml")
    (tmp_path / "orphan.yaml").write_text("base: gone.yaml\n")
    with pytest.raises(ConfigError, match=r"gone.yaml does not exist \(base of .*orphan.yaml\)"):
        load_config(tmp_path / "orphan.yaml")


def test_overrides_and_round_trip(tmp_path):
    cfg = load_config(TINY, ["model.layers=3", "mesh.fsdp=2", "model.rope_theta=5e5", "seed=7"])
    assert (cfg.model.layers, cfg.mesh.fsdp, cfg.model.rope_theta, cfg.seed) == (3, 2, 5e5, 7)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(to_dict(cfg)))
    assert load_config(tmp_path / "c.yaml") == cfg


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.layerz=3", "unknown config key 'model.layerz'"),
        ("trian.steps=3", "unknown config key 'trian'"),
        ("model.layers=three", "model.layers must be int, got str"),
        ("model.rms_eps=[1]", "model.rms_eps must be float"),
        ("runtime.remat=some", "runtime.remat must be one of"),
        ("model.heads=6", r"model.heads \(6\) must be a multiple of model.kv_heads \(4\)"),
        ("mesh.rules=[[embed, fsdpp]]", "maps to unknown mesh axis 'fsdpp'"),
        ("model", "must look like key.path=value"),
        ("model.layers.x=1", "'layers' is not a section"),
        ("generate.audio.temperature=-1", r"generate.audio.temperature must be >= 0, got -1"),
        ("generate.text.guidance_scale=0.5", "generate.text.guidance_scale must be >= 1"),
        ("generate.text.max_step=0", "generate.text.max_step must be positive"),
        ("generate.unconditional_row=none", "generate.unconditional_row must be one of"),
    ],
)
def test_bad_config_is_named(override, message):
    overrides = [override] + (["model.kv_heads=4"] if "heads" in override else [])
    with pytest.raises(ConfigError, match=message):
        load_config(TINY, overrides)


def test_bad_config_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "bad.yaml").write_text("model: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_moved_keys_load_at_their_new_place_with_a_warning(tmp_path, caplog):
    """Configs (and checkpoints) written before the model/runtime/assets split still load."""
    (tmp_path / "old.yaml").write_text(
        "model:\n  layers: 2\n  remat: full\n  audio_encoder: enc\ndata:\n  codec: c\n  cfg_drop: 0.1\n"
        "generate:\n  audio_cfg_scale: 2.0\n"
    )
    with caplog.at_level("WARNING", logger="bagpiper_jax.config"):
        cfg = load_config(tmp_path / "old.yaml", ["model.loss_chunk=32"])
    assert (cfg.model.layers, cfg.runtime.remat, cfg.runtime.loss_chunk) == (2, "full", 32)
    assert (cfg.assets.audio_encoder, cfg.assets.codec, cfg.data.guidance_drop) == ("enc", "c", 0.1)
    assert cfg.generate.audio.guidance_scale == 2.0
    assert "model.remat is now runtime.remat" in caplog.text and "data.codec is now assets.codec" in caplog.text
    old = to_dict(cfg)
    old["model"]["attention"] = old["runtime"].pop("attention")  # a stored config of the old layout
    assert config_from_dict(old) == cfg
    with pytest.raises(ConfigError, match="both model.remat .* and runtime.remat are given"):
        load_config(tmp_path / "old.yaml", ["runtime.remat=dots"])


def test_flat_generate_keys_load_as_per_modality_settings(tmp_path, caplog):
    """The decoding keys before the per-modality sections (issue 22) land in generate.text /
    generate.audio, from a file with a warning and from a stored config silently; the other
    settings of a section keep that modality's defaults."""
    old = {
        "text_temperature": 0.0,
        "text_top_k": 0,
        "audio_temperature": 0.7,
        "audio_top_k": 30,
        "audio_guidance_scale": 2.5,
        "min_text_frames": 2,
        "max_text_frames": 256,
        "min_audio_frames": 25,
        "max_audio_frames": 1024,
        "max_segments": 4,
    }
    (tmp_path / "old.yaml").write_text(yaml.safe_dump({"generate": old}))
    with caplog.at_level("WARNING", logger="bagpiper_jax.config"):
        cfg = load_config(tmp_path / "old.yaml")
    assert "generate.max_audio_frames is now generate.audio.max_step" in caplog.text
    assert cfg.generate.text == SegmentDecoding(temperature=0.0, top_k=0, min_step=2, max_step=256)
    assert cfg.generate.audio == AudioDecoding(0.7, 30, 2.5, 25, 1024)
    assert config_from_dict({"generate": old}) == cfg
    partial = load_config(None, ["generate.audio.top_k=5"]).generate.audio
    assert partial == AudioDecoding(top_k=5) and partial.guidance_scale == 3.0 and partial.min_step == 50
    with pytest.raises(ConfigError, match="both generate.audio_top_k .* and generate.audio.top_k are given"):
        load_config(tmp_path / "old.yaml", ["generate.audio.top_k=5"])


def test_strict_loader_and_its_lenient_mode():
    """One loader for every config dataclass: strict for our files, lenient only on request
    (foreign files such as an HF config.json)."""
    data = {"d_model": 32, "encoder_layers": 2, "encoder_attention_heads": 4, "dropout": 0.1}
    with pytest.raises(ConfigError, match="tower.json: unknown config key 'dropout'"):
        from_dict(AudioEncoderConfig, data, "tower.json")
    assert from_dict(AudioEncoderConfig, data, lenient=True).d_model == 32
    with pytest.raises(ConfigError, match="semantic.hidden_size must be int"):
        from_dict(XCodecConfig, {"semantic": {"hidden_size": "big"}})
    assert from_dict(XCodecConfig, to_dict(XCodecConfig())) == XCodecConfig()
