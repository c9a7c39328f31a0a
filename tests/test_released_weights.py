"""ESPnet-native files (the released Bagpiper weights), the vLLM serving directory and the
logit check: the 8B key plan, bit-exact round trips through from-torch / to-torch, the
reference's strict loader, config.json fields, one-line errors for bad files."""

import json
import logging
import os
import zipfile
from collections import Counter

import ml_dtypes
import numpy as np
import pytest
import torch
from helpers import REPO
from test_convert_checkpoints import CODEC, TOWER, all_tensors, refused, setup  # noqa: F401 - setup is a fixture
from test_hf_qwen3 import hf_dir  # noqa: F401 - a fixture of setup
from tokenizers import Tokenizer, models
from transformers import Qwen3Config, Qwen3ForCausalLM, XcodecConfig, XcodecModel
from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import Qwen3OmniMoeAudioEncoderConfig
from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeAudioEncoder

from bagpiper_jax.audio_encoder.config import AudioEncoderConfig
from bagpiper_jax.checkpoint.frozen_modules import load_codec_config, load_tower_config
from bagpiper_jax.checkpoint.hf_qwen3 import hf_config_dict
from bagpiper_jax.checkpoint.safetensors_writer import TensorSpec
from bagpiper_jax.checkpoint.torch_writer import write_torch_file
from bagpiper_jax.cli.convert import main
from bagpiper_jax.codec.config import XCodecConfig
from bagpiper_jax.config import load_config, to_dict
from bagpiper_jax.convert.espnet import espnet_plan, vocab_weight_values
from bagpiper_jax.convert.hf_xcodec import config_to_hf
from bagpiper_jax.convert.vllm import TOKENIZER_FILES, vllm_config
from bagpiper_jax.vocab import Vocab

PREFIX_COUNTS = {  # the released files (DESIGN.md §8)
    "model.layers.": 396,
    TOWER: 525,
    CODEC: 454,
    "adaptor.continuous_audio.": 2,
    "model.embed_tokens.": 1,
    "model.norm.": 1,
    "lm_head.": 1,
    "stream_emb.": 1,
    "vocab_weight": 1,
}


# The served config.json of Bagpiper-8B (the vLLM fork's BagpiperConfig and its sub-configs),
# field by field; text_temperature / text_topk come from the run's generate section.
VLLM_8B = {
    "architectures": ["BagpiperForConditionalGeneration"],
    "model_type": "bagpiper",
    "torch_dtype": "bfloat16",
    "num_stream": 8,
    "adaptor_input_dim": 2048,
    "vocab_size": 160_392,
    "hidden_size": 4096,
    "codec_base_offset": 152_192,
    "codec_layer_size": 1025,
    "text_token_offset": 256,
    "text_token_end": 152_192,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "eot_token_id": 3,
    "system_token_id": 4,
    "user_token_id": 5,
    "assistant_token_id": 6,
    "text_token_id": 7,
    "audio_token_id": 8,
    "audio_placeholder_token_id": 8,
    "initializer_range": 0.02,
    "audio_temperature": 0.8,
    "audio_topk": 20,
    "text_temperature": None,
    "text_topk": None,
    "xcodec_hf_model_tag": "hf-audio/xcodec-hubert-general",
    "xcodec_sample_rate": 16000,
}
VLLM_8B_TEXT = {
    "model_type": "bagpiper_text",
    "vocab_size": 160_392,
    "hidden_size": 4096,
    "intermediate_size": 12_288,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "hidden_act": "silu",
    "max_position_embeddings": 40_960,
    "initializer_range": 0.02,
    "rms_norm_eps": 1e-6,
    "use_cache": True,
    "tie_word_embeddings": False,
    "rope_theta": 1_000_000.0,
    "attention_bias": False,
    "attention_dropout": 0.0,
}
VLLM_8B_AUDIO = {
    "model_type": "bagpiper_audio_encoder",
    "num_mel_bins": 128,
    "encoder_layers": 32,
    "encoder_attention_heads": 20,
    "encoder_ffn_dim": 5120,
    "d_model": 1280,
    "dropout": 0.0,
    "attention_dropout": 0.0,
    "activation_function": "gelu",
    "activation_dropout": 0.0,
    "scale_embedding": False,
    "initializer_range": 0.02,
    "max_source_positions": 1500,
    "n_window": 100,
    "output_dim": 2048,
    "n_window_infer": 400,
    "conv_chunksize": 500,
    "downsample_hidden_size": 480,
}


def torch_state(path) -> dict[str, torch.Tensor]:
    """A .pt's state dict (the plain one, or the one under "module")."""
    state = torch.load(path, mmap=True, weights_only=True)
    return state.get("module", state) if isinstance(state.get("module"), dict) else state


def bits(t: torch.Tensor) -> np.ndarray:
    return (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy()


def reference_model(cfg, codec_cfg: XCodecConfig, tower_cfg: AudioEncoderConfig) -> torch.nn.Module:
    """Modules at the attribute paths of the reference's model (ESPnet's ParallelLLM with its
    multimodal IOs and the vocab_weight buffer), built from the HF classes it wraps."""
    vocab = Vocab.from_config(cfg.model)
    qwen = Qwen3ForCausalLM(Qwen3Config(**{**hf_config_dict(cfg.model), "vocab_size": vocab.size}))
    ref = torch.nn.Module()
    ref.model, ref.lm_head = qwen.model, qwen.lm_head
    ref.stream_emb = torch.nn.Embedding(cfg.model.num_streams, cfg.model.hidden)
    ref.adaptor = torch.nn.ModuleDict({"continuous_audio": torch.nn.Linear(cfg.model.continuous_dim, cfg.model.hidden)})
    discrete, continuous = torch.nn.Module(), torch.nn.Module()
    discrete.codec_model = XcodecModel(XcodecConfig(**config_to_hf(codec_cfg)))
    continuous.model = torch.nn.Module()
    continuous.model.audio_tower = Qwen3OmniMoeAudioEncoder(Qwen3OmniMoeAudioEncoderConfig(**to_dict(tower_cfg)))
    ref.multimodal_io_dict = torch.nn.ModuleDict({"discrete_audio": discrete, "continuous_audio": continuous})
    ref.register_buffer("vocab_weight", torch.ones(vocab.size))
    return ref


def test_full_size_key_plan():
    """configs/8b.yaml with the shipped XCodec and Qwen3-Omni tower, from shapes alone: the
    1,382 tensors of the released files, named and shaped as the reference's modules."""
    cfg = load_config(REPO / "configs" / "8b.yaml")
    plan = espnet_plan(cfg.model, XCodecConfig(), AudioEncoderConfig())
    names = [s.name for s in plan]
    assert len(plan) == len(set(names)) == 1382
    assert Counter(next(p for p in PREFIX_COUNTS if n.startswith(p)) for n in names) == PREFIX_COUNTS
    assert Counter(s.dtype.name for s in plan) == {"bfloat16": 1381, "float32": 1}
    assert round(sum(s.nbytes for s in plan) / 1e9, 1) == 18.2  # base.pt's size
    with torch.device("meta"):
        expected = {
            k: tuple(v.shape)
            for k, v in reference_model(cfg, XCodecConfig(), AudioEncoderConfig()).state_dict().items()
        }
    assert {s.name: s.shape for s in plan} == expected
    assert expected["model.embed_tokens.weight"] == expected["lm_head.weight"] == (160_392, 4096)


def imported(torch_file, root, out):
    """``from-torch`` of ``torch_file`` with the setup's config into ``out``."""
    assert main(["from-torch", "--torch", str(torch_file), "--config", str(root / "cfg.yaml"), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def released(setup, tmp_path_factory):  # noqa: F811
    """Tiny ESPnet-native files as torch.save writes them: bf16 parameters + a float32
    vocab_weight (the recipe's), in both containers, and one with all-ones weights."""
    root, cfg = setup
    out = tmp_path_factory.mktemp("released")
    state = {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in all_tensors(root / "torch").items()}
    generator = torch.Generator().manual_seed(0)  # trained stream embeddings (hf-qwen3 starts them at zero)
    state["stream_emb.weight"] = torch.randn(state["stream_emb.weight"].shape, generator=generator).to(torch.bfloat16)
    vocab = Vocab.from_config(cfg.model)
    recipe = state | {"vocab_weight": torch.from_numpy(vocab_weight_values("recipe", vocab))}
    torch.save(recipe, out / "model.pt")
    torch.save({"module": recipe}, out / "base.pt")
    torch.save(state | {"vocab_weight": torch.ones(vocab.size)}, out / "ones.pt")
    return out, root, cfg


@pytest.mark.parametrize(("name", "container"), [("model.pt", "plain"), ("base.pt", "deepspeed"), ("ones.pt", "plain")])
def test_espnet_round_trip_is_bit_exact(released, tmp_path, name, container):
    """from-torch -> to-torch --format espnet gives back every tensor bit-exactly (the
    vocab_weight the file came with included), in the same container, and the reference's
    strict loader accepts it."""
    out, root, cfg = released
    imported(out / name, root, tmp_path / "ckpt")
    kind = "ones" if name == "ones.pt" else "recipe"
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["vocab_weight"] == kind
    argv = ["to-torch", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "again.pt")]
    argv += ["--format", "espnet"]
    assert main([*argv, "--container", container]) == 0
    raw = torch.load(tmp_path / "again.pt", weights_only=True)
    assert (list(raw) == ["module"]) == (container == "deepspeed")
    original, again = torch_state(out / name), torch_state(tmp_path / "again.pt")
    assert sorted(again) == sorted(original) and len(again) == len(original)
    for key, value in original.items():
        assert again[key].dtype == value.dtype and again[key].shape == value.shape, key
        np.testing.assert_array_equal(bits(again[key]), bits(value), err_msg=key)
    reference = reference_model(cfg, load_codec_config(root / "codec"), load_tower_config(root / "encoder"))
    reference.load_state_dict(again, strict=True)


def test_espnet_export_without_a_stored_vocab_weight(setup, tmp_path):  # noqa: F811
    """A checkpoint that never had one gets the recipe's weights, or ones on request;
    float32 like the rest when asked."""
    root, cfg = setup
    vocab = Vocab.from_config(cfg.model)
    base = ["to-torch", "--checkpoint", str(root / "ckpt"), "--format", "espnet"]
    assert main([*base, "--out", str(tmp_path / "recipe.pt")]) == 0
    assert main([*base, "--out", str(tmp_path / "ones.pt"), "--vocab-weight", "ones", "--dtype", "float32"]) == 0
    recipe, ones = torch_state(tmp_path / "recipe.pt"), torch_state(tmp_path / "ones.pt")
    np.testing.assert_array_equal(recipe["vocab_weight"].numpy(), vocab_weight_values("recipe", vocab))
    assert recipe["vocab_weight"][vocab.audio_offset :].unique().tolist() == [1 / cfg.model.num_streams]
    assert (ones["vocab_weight"] == 1).all() and ones["vocab_weight"].dtype == torch.float32
    assert recipe["lm_head.weight"].dtype == torch.bfloat16 and ones["lm_head.weight"].dtype == torch.float32
    for key, value in all_tensors(root / "torch").items():  # the float32 export is the stored weights
        np.testing.assert_array_equal(ones[key].numpy(), value, err_msg=key)


def tokenizer_dir(path, names: dict[str, int]):
    """A directory with a tokenizer.json (a word-level model over ``names``) and a
    tokenizer_config.json."""
    path.mkdir(parents=True)
    Tokenizer(models.WordLevel(names, unk_token=next(iter(names)))).save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    return path


def test_vllm_directory(setup, tmp_path, caplog):  # noqa: F811
    root, cfg = setup
    vocab = Vocab.from_config(cfg.model)
    bagpiper = {vocab.special_name(i): i for i in range(vocab.num_special)} | {"hello": vocab.text_offset}
    argv = ["to-torch", "--checkpoint", str(root / "ckpt"), "--format", "vllm", "--max-shard-size", "200KB"]
    served = tmp_path / "served"
    with caplog.at_level(logging.WARNING):
        assert main([*argv, "--out", str(served), "--tokenizer", str(tokenizer_dir(tmp_path / "tok", bagpiper))]) == 0
    # keys verbatim, bf16, sharded with an index; no vocab_weight
    index = json.loads((served / "model.safetensors.index.json").read_text())
    shards = sorted({*index["weight_map"].values()})
    assert len(shards) > 1 and all((served / s).is_file() for s in shards)
    exported, reference = all_tensors(served), all_tensors(root / "torch")
    assert sorted(exported) == sorted(index["weight_map"]) == sorted(reference)
    for key, value in reference.items():
        assert exported[key].dtype == ml_dtypes.bfloat16, key
        np.testing.assert_array_equal(exported[key], value.astype(ml_dtypes.bfloat16), err_msg=key)
    # config.json: the fields of the fork's BagpiperConfig (the list above), here for the tiny config
    config = json.loads((served / "config.json").read_text())
    assert config == vllm_config(cfg, load_tower_config(root / "encoder"))
    assert (set(config), set(config["text_config"]), set(config["audio_config"])) == (
        set(VLLM_8B) | {"text_config", "audio_config"},
        set(VLLM_8B_TEXT),
        set(VLLM_8B_AUDIO),
    )
    audio_offset = 16 + 1024  # num_special + text_vocab_size (configs/tiny.yaml)
    tiny = {
        "adaptor_input_dim": 32,
        "vocab_size": audio_offset + 8 * 65,
        "hidden_size": 64,
        "codec_base_offset": audio_offset,
        "codec_layer_size": 65,
        "text_token_offset": 16,
        "text_token_end": audio_offset,
    }
    assert {k: config[k] for k in tiny} == tiny
    assert (config["audio_config"]["n_window"], config["audio_config"]["n_window_infer"]) == (50, 100)
    # the configs describe the tensors: HF modules built from them load them strictly
    qwen = Qwen3ForCausalLM(Qwen3Config(**config["text_config"]))
    qwen.load_state_dict(
        {
            k: torch.from_numpy(v.astype(np.float32))
            for k, v in exported.items()
            if not k.startswith(("multimodal", "adaptor", "stream_emb"))
        },
        strict=True,
    )
    tower_hf = Qwen3OmniMoeAudioEncoder(Qwen3OmniMoeAudioEncoderConfig(**config["audio_config"]))
    tower_hf.load_state_dict(
        {k[len(TOWER) :]: torch.from_numpy(v.astype(np.float32)) for k, v in exported.items() if k.startswith(TOWER)},
        strict=True,
    )
    assert json.loads((served / "generation_config.json").read_text()) == {
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
    }
    # tokenizer files copied; the missing ones named
    assert (served / "tokenizer.json").read_bytes() == (tmp_path / "tok" / "tokenizer.json").read_bytes()
    assert (served / "tokenizer_config.json").is_file()
    missing = [n for n in TOKENIZER_FILES if n not in ("tokenizer.json", "tokenizer_config.json")]
    assert any(all(n in r.getMessage() for n in missing) and "missing" in r.getMessage() for r in caplog.records)
    # a text tokenizer in its own ids (assets.tokenizer holds Qwen3's for training) is not copied
    caplog.clear()
    qwen_like = tokenizer_dir(tmp_path / "qwen", {"!": 0, "<|endoftext|>": 1})
    assert main([*argv, "--out", str(tmp_path / "served2"), "--tokenizer", str(qwen_like)]) == 0
    assert not (tmp_path / "served2" / "tokenizer.json").exists()
    assert any("not the Bagpiper tokenizer" in r.getMessage() for r in caplog.records)


def test_vllm_config_of_the_8b_release():
    """Every field of the served config.json for configs/8b.yaml with the vLLM fork's tower
    windows (n_window 100 / n_window_infer 400): those of the fork's BagpiperConfig."""
    cfg = load_config(REPO / "configs" / "8b.yaml")
    config = vllm_config(cfg, AudioEncoderConfig(n_window=100, n_window_infer=400))
    text, audio = config.pop("text_config"), config.pop("audio_config")
    assert config == VLLM_8B | {"text_temperature": cfg.generate.text.temperature, "text_topk": cfg.generate.text.top_k}
    assert text == VLLM_8B_TEXT
    assert audio == VLLM_8B_AUDIO


@pytest.fixture(scope="module")
def converted(released, tmp_path_factory):
    """The DeepSpeed-container file converted by from-torch."""
    out, root, _ = released
    return imported(out / "base.pt", root, tmp_path_factory.mktemp("converted") / "ckpt")


def test_check_passes_on_a_converted_model(released, converted, capsys):
    out, _, _ = released
    assert main(["check", "--checkpoint", str(converted), "--torch", str(out / "base.pt")]) == 0
    report = capsys.readouterr().out
    assert "ok: every stream's KL divergence" in report
    rows = [line.split() for line in report.splitlines() if line.split() and line.split()[0].isdigit()]
    assert [int(r[0]) for r in rows] == list(range(8))
    assert all(float(r[1]) < 1e-5 and float(r[2]) < 1e-10 for r in rows)
    assert len({r[1] for r in rows[1:]}) > 1  # the stream embeddings differ: each stream's head is checked


@pytest.mark.parametrize(
    ("key", "row", "failing"),
    [("model.layers.1.self_attn.o_proj.weight", None, r"\d"), ("stream_emb.weight", 3, "3")],
)
def test_check_fails_on_a_perturbed_tensor(released, converted, tmp_path, capsys, key, row, failing):
    out, _, _ = released
    state = torch_state(out / "base.pt")
    noise = 0.5 * torch.randn(state[key].shape, generator=torch.Generator().manual_seed(1))
    if row is not None:  # one stream's embedding only: only that stream fails
        noise[torch.arange(len(noise)) != row] = 0
    state[key] = (state[key].float() + noise).to(torch.bfloat16)
    torch.save(state, tmp_path / "perturbed.pt")
    argv = ["check", "--checkpoint", str(converted), "--torch", str(tmp_path / "perturbed.pt")]
    refused(capsys, argv, rf"stream {failing}: KL divergence .* exceeds --max-kl 0.0001")


class _RunsCode:
    """Pickles as a call of os.makedirs: a file that is not weights-only."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.makedirs, (self.path,))


def test_bad_espnet_files_get_one_line_errors(released, tmp_path, capsys):
    out, root, cfg = released
    state = torch_state(out / "model.pt")

    def from_torch_refused(tensors, pattern):
        torch.save(tensors, tmp_path / "bad.pt")
        argv = ["from-torch", "--torch", str(tmp_path / "bad.pt"), "--config", str(root / "cfg.yaml")]
        refused(capsys, [*argv, "--out", str(tmp_path / "out")], pattern)

    marker = tmp_path / "code_ran"
    from_torch_refused(
        state | {"extra": _RunsCode(marker)},
        r"cannot load .*bad.pt as a weights-only torch file \(nothing in it was run\)",
    )
    assert not marker.exists()
    key = "model.layers.0.mlp.gate_proj.weight"
    from_torch_refused(state | {key: state[key][:-1]}, rf"'{key}' .* shape \(127, 64\)")
    from_torch_refused({k: v for k, v in state.items() if k != key}, f"'{key}' missing")
    vocab = Vocab.from_config(cfg.model)
    from_torch_refused(
        state | {"vocab_weight": torch.ones(vocab.size - 1)},
        r"'vocab_weight' .* shape \(1559,\); the vocabulary of the config has 1560 ids",
    )
    halves = vocab_weight_values("ones", vocab)
    halves[vocab.audio_offset :] = 0.5
    from_torch_refused(
        state | {"vocab_weight": torch.from_numpy(halves)},
        r"neither all ones nor the recipe's weights .*codec ids \[1040, 1560\): 0.5 ×520",
    )
    from_torch_refused({"module": state | {"lm_head.bias": torch.zeros(3)}}, r"no place .*'lm_head.bias'")


def test_torch_writer_zip64_and_alignment(tmp_path, monkeypatch):
    """Records past the zip64 limits (forced low here) and 64-byte aligned data: torch maps them."""
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 100)
    rng = np.random.default_rng(0)
    tensors = {
        "a": rng.standard_normal((7, 33)).astype(ml_dtypes.bfloat16),
        "b.weight": np.arange(50, dtype=np.float32),
        "c": np.float32(2.5).reshape(()),
    }
    specs = [TensorSpec(k, v.shape, v.dtype) for k, v in tensors.items()]
    write_torch_file(tmp_path / "x.pt", specs, iter(tensors.items()), wrap="module")
    loaded = torch.load(tmp_path / "x.pt", mmap=True, weights_only=True)["module"]
    assert list(loaded) == list(tensors)
    for key, value in tensors.items():
        np.testing.assert_array_equal(
            bits(loaded[key]), value.view(np.int16) if value.dtype == ml_dtypes.bfloat16 else value
        )
    with zipfile.ZipFile(tmp_path / "x.pt") as zf:
        for info in zf.infolist():
            with open(tmp_path / "x.pt", "rb") as f:
                f.seek(info.header_offset + 26)
                name_len, extra_len = np.frombuffer(f.read(4), np.uint16)
            assert (info.header_offset + 30 + name_len + extra_len) % 64 == 0, info.filename
