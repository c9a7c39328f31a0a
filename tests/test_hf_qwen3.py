"""HF Qwen3 checkpoint loading: parity of stream-0 text logits with transformers (fp32)."""

import json

import jax
import numpy as np
import pytest
import torch
from flax import nnx
from helpers import tiny_config
from transformers import Qwen3Config, Qwen3ForCausalLM

from bagpiper_jax.checkpoint.errors import CheckpointError
from bagpiper_jax.checkpoint.hf_qwen3 import load_hf_qwen3, model_config_from_hf, read_hf_config
from bagpiper_jax.config import ConfigError
from bagpiper_jax.model import Batch
from bagpiper_jax.sharding import make_mesh


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A tiny random Qwen3 with the tiny config's backbone, saved as sharded safetensors."""
    m = tiny_config().model
    torch.manual_seed(0)
    hf_cfg = Qwen3Config(
        vocab_size=m.text_vocab_size,
        hidden_size=m.hidden,
        intermediate_size=m.mlp,
        num_hidden_layers=m.layers,
        num_attention_heads=m.heads,
        num_key_value_heads=m.kv_heads,
        head_dim=m.head_dim,
        rms_norm_eps=m.rms_eps,
        rope_parameters={"rope_type": "default", "rope_theta": m.rope_theta},
        max_position_embeddings=tiny_config().runtime.max_frames,
        tie_word_embeddings=False,
    )
    model = Qwen3ForCausalLM(hf_cfg).eval()
    with torch.no_grad():  # HF init leaves norms at one: randomise them so they are tested
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("qwen3")
    model.save_pretrained(path, max_shard_size="100KB")
    assert (path / "model.safetensors.index.json").exists()
    return path, model


def hf_logits(model, tokens):
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].numpy()


def stream0_text_logits(graphdef, state, tokens_per_segment, frames, vocab):
    """Our stream-0 logits over the text range for one packed row (run as 4 equal rows, so
    the batch divides the data axes of the 8-device mesh)."""
    ids = np.zeros((1, frames, vocab.num_streams), np.int32)
    seg = np.zeros((1, frames), np.int32)
    pos = np.zeros((1, frames), np.int32)
    start = 0
    for i, tokens in enumerate(tokens_per_segment):
        n = len(tokens)
        ids[0, start : start + n, 0] = vocab.text_ids(tokens)
        seg[0, start : start + n], pos[0, start : start + n] = i + 1, np.arange(n)
        start += n
    rows = lambda x: np.repeat(x, 4, axis=0)
    batch = Batch(
        ids=rows(ids), segment_ids=rows(seg), positions=rows(pos), loss_mask=np.zeros((4,) + ids.shape[1:], np.float32)
    )
    model = nnx.merge(graphdef, state)
    logits0, _ = model.stream_logits(model.hidden_states(batch))
    return np.asarray(logits0[0, :, vocab.text_offset : vocab.text_offset + vocab.text_size])


@pytest.mark.parametrize("devices", [1, 8])
def test_text_logits_match_hf_single_and_packed(hf_dir, devices):
    path, hf_model = hf_dir
    cfg = tiny_config(*(["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"] if devices == 8 else []))
    mesh = make_mesh(cfg.mesh, jax.devices()[:devices])
    graphdef, state, _ = load_hf_qwen3(path, cfg.model, cfg.runtime, mesh, cfg.mesh.rules)
    rng = np.random.default_rng(0)
    a = rng.integers(0, cfg.model.text_vocab_size, 23).tolist()
    b = rng.integers(0, cfg.model.text_vocab_size, 14).tolist()
    vocab = nnx.merge(graphdef, state).vocab
    with jax.set_mesh(mesh):
        single = stream0_text_logits(graphdef, state, [a], 23, vocab)
        packed = stream0_text_logits(graphdef, state, [a, b], 45, vocab)  # 8 padding frames
    np.testing.assert_allclose(single, hf_logits(hf_model, a), atol=1e-4, rtol=0)
    np.testing.assert_allclose(packed[:23], hf_logits(hf_model, a), atol=1e-4, rtol=0)
    np.testing.assert_allclose(packed[23:37], hf_logits(hf_model, b), atol=1e-4, rtol=0)


def test_vocabulary_extension(hf_dir):
    path, hf_model = hf_dir
    cfg = tiny_config()
    load = lambda devices, seed: nnx.merge(
        *load_hf_qwen3(path, cfg.model, cfg.runtime, make_mesh(cfg.mesh, devices), cfg.mesh.rules, seed=seed)[:2]
    )
    model = load(jax.devices()[:1], 0)
    v = model.vocab
    embed, head = np.asarray(model.embed[...]), np.asarray(model.lm_head[...]).T
    text = slice(v.text_offset, v.text_offset + v.text_size)
    np.testing.assert_array_equal(embed[text], hf_model.model.embed_tokens.weight.detach().numpy())
    np.testing.assert_array_equal(head[text], hf_model.lm_head.weight.detach().numpy())
    other = np.concatenate([embed[: v.text_offset], embed[v.audio_offset :]])
    assert abs(other.std() - cfg.model.init_std) < 0.1 * cfg.model.init_std
    assert not np.allclose(embed[: v.text_offset], head[: v.text_offset])  # independent draws
    np.testing.assert_array_equal(np.asarray(model.stream_emb[...]), 0)
    sharded = load(jax.devices(), 0)  # identical on any mesh, different with another seed
    np.testing.assert_array_equal(np.asarray(sharded.embed[...]), embed)
    assert not np.allclose(np.asarray(load(jax.devices()[:1], 1).embed[...])[: v.text_offset], embed[: v.text_offset])


def test_config_from_hf_dimensions(hf_dir):
    path, _ = hf_dir
    derived = model_config_from_hf(read_hf_config(path), tiny_config().model)
    assert derived == tiny_config().model


def test_not_qwen3_directory_is_an_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(CheckpointError, match="model_type 'llama'; expected 'qwen3'"):
        read_hf_config(tmp_path)
    with pytest.raises(CheckpointError, match="config.json not found"):
        read_hf_config(tmp_path / "nowhere")


def test_mismatched_heads_are_named(hf_dir):
    path, _ = hf_dir
    cfg = tiny_config("model.heads=8", "model.kv_heads=2")
    with pytest.raises(ConfigError, match=r"model.heads=8 but .*config.json gives 4"):
        load_hf_qwen3(path, cfg.model, cfg.runtime, make_mesh(cfg.mesh, jax.devices()[:1]), cfg.mesh.rules)


def test_missing_and_misshapen_tensors_are_named(hf_dir, tmp_path):
    path, hf_model = hf_dir
    cfg = tiny_config()
    state = {k: v for k, v in hf_model.state_dict().items() if k != "model.layers.1.mlp.up_proj.weight"}
    from safetensors.torch import save_file

    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "model.safetensors")
    mesh = make_mesh(cfg.mesh, jax.devices()[:1])
    with pytest.raises(CheckpointError, match="'model.layers.1.mlp.up_proj.weight' missing"):
        load_hf_qwen3(tmp_path, cfg.model, cfg.runtime, mesh, cfg.mesh.rules)
    state["model.layers.1.mlp.up_proj.weight"] = torch.zeros(7, 5)
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"'model.layers.1.mlp.up_proj.weight' .* shape \(7, 5\)"):
        load_hf_qwen3(tmp_path, cfg.model, cfg.runtime, mesh, cfg.mesh.rules)
