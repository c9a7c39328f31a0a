"""bagpiper-convert hf-qwen3 / to-torch / from-torch, model checkpoints, resharding, init_from."""

import dataclasses
import json
import re

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
import torch
import yaml
from flax import nnx
from helpers import tiny_config
from safetensors.numpy import load_file, save_file
from test_hf_qwen3 import hf_dir, hf_logits, stream0_text_logits  # noqa: F401 - hf_dir is a fixture
from transformers import AutoModelForCausalLM, Qwen3ForCausalLM

from bagpiper_jax.checkpoint import lazy_save
from bagpiper_jax.checkpoint.errors import CheckpointError
from bagpiper_jax.checkpoint.frozen_modules import save_codec, save_tower_params
from bagpiper_jax.checkpoint.hf_qwen3 import load_hf_qwen3
from bagpiper_jax.checkpoint.lazy_save import LazyArray, save_pytree
from bagpiper_jax.checkpoint.model_checkpoint import ParamsSource, load_init_params
from bagpiper_jax.checkpoint.params_dir import load_params
from bagpiper_jax.checkpoint.run import RunCheckpoints
from bagpiper_jax.checkpoint.safetensors_writer import TensorSpec, write_safetensors
from bagpiper_jax.checkpoint.tensor_reader import TensorReader
from bagpiper_jax.cli.convert import main
from bagpiper_jax.codec.params import abstract_model, variable_names
from bagpiper_jax.config import ConfigError, to_dict
from bagpiper_jax.convert.hf_audio_encoder import abstract_params
from bagpiper_jax.data.demo import tiny_codec_config, tiny_encoder_config
from bagpiper_jax.model.create import abstract_model as abstract_bagpiper
from bagpiper_jax.sharding import make_mesh, state_shardings
from bagpiper_jax.train.state import abstract_state, init_state, train_state_shardings

CODEC = "multimodal_io_dict.discrete_audio.codec_model."
TOWER = "multimodal_io_dict.continuous_audio.model.audio_tower."


@pytest.fixture(scope="module")
def setup(hf_dir, tmp_path_factory):  # noqa: F811
    """Tiny HF Qwen3 + random codec/encoder params dirs + a config naming them, converted by
    ``hf-qwen3`` on the 8-device fsdp mesh, then exported by ``to-torch`` (sharded)."""
    root = tmp_path_factory.mktemp("convert")
    cfg = tiny_config(f"assets.codec={root}/codec", f"assets.audio_encoder={root}/encoder")
    rng = np.random.default_rng(0)
    draw = lambda spec: rng.normal(size=spec.shape).astype(spec.dtype)  # random values, real structure
    codec_cfg = tiny_codec_config()
    save_codec(root / "codec", codec_cfg, {k: draw(v) for k, v in variable_names(abstract_model(codec_cfg)).items()})
    encoder_cfg = tiny_encoder_config(cfg.model.continuous_dim, 100)
    save_tower_params(root / "encoder", encoder_cfg, jax.tree.map(draw, abstract_params(encoder_cfg)))
    (root / "cfg.yaml").write_text(yaml.safe_dump(to_dict(cfg)))
    assert (
        main(["hf-qwen3", "--hf", str(hf_dir[0]), "--config", str(root / "cfg.yaml"), "--out", str(root / "ckpt")]) == 0
    )
    assert (
        main(
            ["to-torch", "--checkpoint", str(root / "ckpt"), "--out", str(root / "torch"), "--max-shard-size", "300KB"]
        )
        == 0
    )
    return root, cfg


def refused(capsys, argv: list[str], pattern: str) -> None:
    """``bagpiper-convert argv`` exits 1, its last stderr line (after any progress bar) the
    error on one line matching ``pattern``, no traceback."""
    assert main(argv) == 1
    err = capsys.readouterr().err
    last = err.rstrip("\n").split("\n")[-1].split("\r")[-1]
    assert re.search(pattern, last) and last.startswith(f"bagpiper-convert {argv[0]}: ") and "Traceback" not in err, err


def logits_of(ckpt, cfg, tokens, devices=1):
    mesh = make_mesh(cfg.mesh, jax.devices()[:devices])
    graphdef, state = ParamsSource(ckpt).restore(cfg, mesh)
    with jax.set_mesh(mesh):
        return stream0_text_logits(graphdef, state, [tokens], len(tokens), nnx.merge(graphdef, state).vocab)


def tokens(cfg, n=19, seed=0):
    return np.random.default_rng(seed).integers(0, cfg.model.text_vocab_size, n).tolist()


def all_tensors(path) -> dict[str, np.ndarray]:
    reader = TensorReader(path)
    return {k: np.array(reader.view(k)) for k in reader.keys()}


def test_hf_qwen3_checkpoint_matches_hf(setup, hf_dir):  # noqa: F811
    root, cfg = setup
    a = tokens(cfg)
    np.testing.assert_allclose(logits_of(root / "ckpt", cfg, a), hf_logits(hf_dir[1], a), atol=1e-4, rtol=0)
    params = load_params(root / "ckpt")
    np.testing.assert_array_equal(np.asarray(params["stream_emb"]["value"]), 0)
    kernel = np.asarray(params["adaptor_kernel"]["value"])
    assert abs(kernel.std() - cfg.model.init_std) < 0.2 * cfg.model.init_std
    info = json.loads((root / "ckpt" / "config.json").read_text())
    assert (info["format"], info["kind"], info["step"]) == ("bagpiper-params", "model", 0)
    for part in ("codec", "encoder"):  # the frozen modules named in the config came along
        stored = load_params(root / "ckpt" / ("codec" if part == "codec" else "audio_encoder"))
        jax.tree.map(np.testing.assert_array_equal, stored, load_params(root / part))


def test_hf_qwen3_dims_from_hf_config_without_config(hf_dir, tmp_path):  # noqa: F811
    assert main(["hf-qwen3", "--hf", str(hf_dir[0]), "--out", str(tmp_path / "ckpt")]) == 0
    model = json.loads((tmp_path / "ckpt" / "config.json").read_text())["config"]["model"]
    tiny = tiny_config().model
    assert (
        model["hidden"],
        model["layers"],
        model["heads"],
        model["kv_heads"],
        model["mlp"],
        model["text_vocab_size"],
    ) == (tiny.hidden, tiny.layers, tiny.heads, tiny.kv_heads, tiny.mlp, tiny.text_vocab_size)
    assert (model["num_special"], model["codebook_size"], model["continuous_dim"]) == (256, 1024, 2048)  # 8B


def test_hf_qwen3_refuses_mismatched_config(hf_dir, tmp_path, capsys):  # noqa: F811
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(to_dict(tiny_config("model.mlp=96"))))
    refused(
        capsys,
        ["hf-qwen3", "--hf", str(hf_dir[0]), "--config", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "ckpt")],
        r"model.mlp=96 but .*config.json gives 128",
    )


def test_to_torch_loads_into_qwen3_with_extended_vocab(setup, hf_dir):  # noqa: F811
    root, cfg = setup
    state = all_tensors(root / "torch")
    assert (root / "torch" / "model.safetensors.index.json").is_file()
    vocab = nnx.merge(*ParamsSource(root / "ckpt").restore(cfg, make_mesh(cfg.mesh, jax.devices()[:1]))).vocab
    assert state["model.embed_tokens.weight"].shape == state["lm_head.weight"].shape == (vocab.size, cfg.model.hidden)
    assert state["stream_emb.weight"].shape == (cfg.model.num_streams, cfg.model.hidden)
    assert state["adaptor.continuous_audio.weight"].shape == (cfg.model.hidden, cfg.model.continuous_dim)
    assert any(k.startswith(CODEC) for k in state) and any(k.startswith(TOWER) for k in state)
    config = hf_dir[1].config.to_dict() | {"vocab_size": vocab.size}
    model = Qwen3ForCausalLM(type(hf_dir[1].config).from_dict(config)).eval()
    model.load_state_dict(
        {k: torch.from_numpy(v) for k, v in state.items() if k.startswith(("model.", "lm_head."))}, strict=True
    )
    a = tokens(cfg, seed=1)
    with torch.no_grad():
        theirs = model(torch.tensor([vocab.text_ids(a)])).logits[0].numpy()
    ours = logits_of(root / "ckpt", cfg, a)
    np.testing.assert_allclose(
        ours, theirs[:, vocab.text_offset : vocab.text_offset + vocab.text_size], atol=1e-4, rtol=0
    )


def test_hf_text_only_loads_with_auto_model(setup, hf_dir, tmp_path):  # noqa: F811
    root, cfg = setup
    assert main(["to-torch", "--checkpoint", str(root / "ckpt"), "--out", str(tmp_path / "hf"), "--hf-text-only"]) == 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    a = tokens(cfg, seed=2)
    np.testing.assert_allclose(hf_logits(model, a), hf_logits(hf_dir[1], a), atol=1e-4, rtol=0)


def test_round_trip_is_bit_exact(setup, tmp_path):
    """torch -> ours -> torch: every tensor identical (codec and encoder included); the
    sharded output equals a single-file one; .pt input and bf16 output round-trip too."""
    root, _ = setup
    original = all_tensors(root / "torch")
    assert (
        main(
            [
                "from-torch",
                "--torch",
                str(root / "torch"),
                "--config",
                str(root / "cfg.yaml"),
                "--out",
                str(tmp_path / "ckpt"),
            ]
        )
        == 0
    )
    jax.tree.map(np.testing.assert_array_equal, load_params(tmp_path / "ckpt"), load_params(root / "ckpt"))
    jax.tree.map(np.testing.assert_array_equal, load_params(tmp_path / "ckpt" / "codec"), load_params(root / "codec"))
    main(["to-torch", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "one.safetensors")])
    again = all_tensors(tmp_path / "one.safetensors")
    assert sorted(again) == sorted(original)
    for key, value in original.items():
        assert again[key].dtype == value.dtype and np.array_equal(again[key], value), key

    torch.save({k: torch.from_numpy(v) for k, v in original.items()}, tmp_path / "model.pt")
    main(
        [
            "from-torch",
            "--torch",
            str(tmp_path / "model.pt"),
            "--config",
            str(root / "cfg.yaml"),
            "--out",
            str(tmp_path / "from_pt"),
        ]
    )
    jax.tree.map(np.testing.assert_array_equal, load_params(tmp_path / "from_pt"), load_params(root / "ckpt"))

    main(["to-torch", "--checkpoint", str(root / "ckpt"), "--out", str(tmp_path / "bf16"), "--dtype", "bfloat16"])
    main(
        [
            "from-torch",
            "--torch",
            str(tmp_path / "bf16"),
            "--config",
            str(root / "cfg.yaml"),
            "--out",
            str(tmp_path / "ckpt_bf16"),
        ]
    )
    main(
        [
            "to-torch",
            "--checkpoint",
            str(tmp_path / "ckpt_bf16"),
            "--out",
            str(tmp_path / "bf16_again"),
            "--dtype",
            "bfloat16",
        ]
    )
    first, second = all_tensors(tmp_path / "bf16"), all_tensors(tmp_path / "bf16_again")
    assert {v.dtype.name for v in first.values()} == {"bfloat16"}
    for key, value in first.items():
        assert np.array_equal(second[key].view(np.uint16), value.view(np.uint16)), key


def test_bad_torch_inputs_are_named(setup, tmp_path, capsys):
    root, _ = setup
    state = all_tensors(root / "torch")

    def from_torch_refused(tensors, pattern, config=root / "cfg.yaml"):
        save_file(tensors, str(tmp_path / "bad.safetensors"))
        refused(
            capsys,
            [
                "from-torch",
                "--torch",
                str(tmp_path / "bad.safetensors"),
                "--config",
                str(config),
                "--out",
                str(tmp_path / "out"),
            ],
            pattern,
        )

    missing = {k: v for k, v in state.items() if k != "model.layers.1.mlp.up_proj.weight"}
    from_torch_refused(missing, "'model.layers.1.mlp.up_proj.weight' missing")
    from_torch_refused(
        state | {"stream_emb.weight": np.zeros((7, 64), np.float32)}, r"'stream_emb.weight' .* shape \(7, 64\)"
    )
    from_torch_refused(
        state | {"model.layers.2.mlp.up_proj.weight": np.zeros(3, np.float32)},
        r"no place .*'model.layers.2.mlp.up_proj.weight'",
    )
    from_torch_refused({k: v for k, v in state.items() if k != CODEC + "fc.weight"}, "'fc.weight' missing")
    (tmp_path / "plain.yaml").write_text(yaml.safe_dump(to_dict(tiny_config())))
    from_torch_refused(state, "set assets.codec", config=tmp_path / "plain.yaml")
    refused(
        capsys, ["to-torch", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "x")], "neither a model checkpoint"
    )


def test_writer_checks_the_plan(tmp_path):
    specs = [TensorSpec("a", (2, 3), np.dtype(np.float32)), TensorSpec("b", (4,), np.dtype(np.float32))]
    with pytest.raises(CheckpointError, match="'b' .* does not match the planned 'b' \\(4,\\)"):
        write_safetensors(tmp_path, specs, iter([("a", np.zeros((2, 3), np.float32)), ("b", np.zeros(5, np.float32))]))
    files = write_safetensors(
        tmp_path / "s",
        specs,
        iter([("a", np.ones((2, 3), np.float32)), ("b", np.arange(4, dtype=np.float32))]),
        max_shard_size=24,
    )
    assert [f.name for f in files] == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
    ]
    np.testing.assert_array_equal(load_file(str(files[1]))["b"], np.arange(4))


def test_lazy_save_writes_what_standard_save_writes(tmp_path, monkeypatch):
    """Params read chunk by chunk while they are written: the same metadata, sharding and
    array-metadata files as StandardSave of the built tree, restored by StandardRestore."""
    monkeypatch.setattr(lazy_save, "CHUNK_BYTES", 64)  # chunks of at most 16 floats
    mesh = jax.make_mesh((8,), ("fsdp",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("fsdp"))
    values = {
        "a": {"value": np.arange(512, dtype=np.float32).reshape(64, 8)},
        "b": {"value": np.linspace(0, 1, 8, dtype=np.float32)},
    }
    opened, done, blocks = [], [], []

    def open_reader(v):
        opened.append(v.shape)
        return lambda index: blocks.append(v[index].shape) or v[index].copy()

    lazy = jax.tree.map(
        lambda v: LazyArray(v.shape, v.dtype, sharding, lambda v=v: open_reader(v), lambda v=v: done.append(v.shape)),
        values,
    )
    assert not opened
    save_pytree(tmp_path / "lazy", lazy)
    assert sorted(opened) == sorted(done) == [(8,), (64, 8)]
    assert blocks.count((2, 8)) == 32 and blocks.count((1,)) == 8 and len(blocks) == 40  # chunks within shards
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(
            tmp_path / "standard",
            jax.tree.map(lambda v: jax.device_put(v, sharding), values),
            save_args=jax.tree.map(lambda _: ocp.SaveArgs(chunk_byte_size=64), values),
        )
        ckptr.wait_until_finished()
        for name in ("_METADATA", "_sharding", "array_metadatas/process_0"):
            assert json.loads((tmp_path / "lazy" / name).read_text()) == json.loads(
                (tmp_path / "standard" / name).read_text()
            ), name
        target = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding), values)
        restored = ckptr.restore(tmp_path / "lazy", target)
    jax.tree.map(np.testing.assert_array_equal, restored, values)
    assert restored["a"]["value"].sharding == sharding


def test_torch_files_are_memory_mapped(tmp_path):
    """Zip-format .pt/.bin are memory-mapped and release() drops the pages read; legacy
    (non-zip) files are read whole."""
    tensors = {"a": torch.arange(2048.0).reshape(2, 1024), "b": torch.ones(4, dtype=torch.bfloat16)}
    torch.save(tensors, tmp_path / "zip.pt")
    torch.save(tensors, tmp_path / "legacy.bin", _use_new_zipfile_serialization=False)

    def resident_kb(path):  # None: not mapped
        total, inside = None, False
        with open("/proc/self/smaps") as smaps:
            lines = smaps.readlines()
        for line in lines:
            if re.match(r"[0-9a-f]+-[0-9a-f]+ ", line):
                inside = line.rstrip().endswith(str(path))
                total = (total or 0) if inside else total
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1])
        return total

    for name, mmap in (("zip.pt", True), ("legacy.bin", False)):
        reader = TensorReader(tmp_path / name)
        for _ in range(2):  # read again after release
            np.testing.assert_array_equal(reader.get("a"), np.arange(2048.0).reshape(2, 1024))
            assert reader.get("b").dtype == np.float32 and (reader.get("b") == 1).all()
            if mmap:
                assert resident_kb(tmp_path / name) >= 8
                reader.release()
                assert resident_kb(tmp_path / name) == 0
            else:
                assert resident_kb(tmp_path / name) is None
                reader.release()


def test_model_checkpoint_restores_onto_other_meshes(setup):
    """Written with fsdp=8; read with data=2 x fsdp=4 and on one device: same values, new shardings."""
    root, _ = setup
    reference = None
    for overrides, devices in ((["mesh.data=2", "mesh.fsdp=4"], 8), ([], 1)):
        c = tiny_config(*overrides)
        mesh = make_mesh(c.mesh, jax.devices()[:devices])
        _, state = ParamsSource(root / "ckpt").restore(c, mesh)
        shardings = state_shardings(abstract_bagpiper(c.model, c.runtime, c.mesh.rules)[1], mesh, c.mesh.rules)
        embed = state["embed"].get_raw_value()
        assert embed.sharding == shardings["embed"].get_raw_value() and embed.sharding.mesh.shape == mesh.shape
        values = jax.tree.map(np.asarray, nnx.to_pure_dict(state))
        if reference is None:
            reference = values
        else:
            jax.tree.map(np.testing.assert_array_equal, values, reference)
    with pytest.raises(ConfigError, match="model.hidden=32 but .* has 64"):
        ParamsSource(root / "ckpt").restore(tiny_config("model.hidden=32"))


def test_init_from_accepts_model_checkpoint_and_hf_dir(setup, hf_dir):  # noqa: F811
    root, cfg = setup
    mesh = make_mesh(cfg.mesh)
    from_ckpt = load_init_params(root / "ckpt", cfg, mesh)
    from_hf = load_init_params(hf_dir[0], cfg, mesh)
    expected = load_hf_qwen3(hf_dir[0], cfg.model, cfg.runtime, mesh, cfg.mesh.rules, cfg.seed)[1]
    jax.tree.map(np.testing.assert_array_equal, nnx.to_pure_dict(from_hf), nnx.to_pure_dict(expected))
    jax.tree.map(np.testing.assert_array_equal, nnx.to_pure_dict(from_ckpt), nnx.to_pure_dict(expected))


def test_run_directory_to_torch(setup, tmp_path):
    """A run's checkpoint (train state with optimizer moments): latest step by default or
    --step; only the params are read."""
    root, cfg = setup
    mesh = make_mesh(cfg.mesh)
    _, params = ParamsSource(root / "ckpt").restore(cfg, mesh)
    tx = optax.adamw(1e-3)
    state = init_state(params, tx, train_state_shardings(abstract_state(params, tx), mesh, cfg.mesh.rules))
    run = tmp_path / "run"
    ckpts = RunCheckpoints(tmp_path / "elsewhere", keep=3, async_save=False)  # train.checkpoint_dir
    for step in (5, 7):
        ckpts.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave({"step": step, "config": to_dict(cfg)})
            ),
        )
    ckpts.close()
    run.mkdir()
    (run / "config_resolved.json").write_text(
        json.dumps(
            to_dict(
                dataclasses.replace(
                    cfg,
                    train=dataclasses.replace(
                        cfg.train, checkpoint_dir=str(tmp_path / "elsewhere"), init_from=str(root / "ckpt")
                    ),
                )
            )
        )
    )
    source = ParamsSource(run)
    assert source.meta["source"].startswith("hf-qwen3 ")  # the metadata of the model checkpoint it started from
    assert source.step == 7 and ParamsSource(run, 5).step == 5 and ParamsSource(tmp_path / "elsewhere" / "5").step == 5
    with pytest.raises(CheckpointError, match="no step 6; steps: \\[5, 7\\]"):
        ParamsSource(run, 6)
    # All params at once onto another mesh (what bagpiper-generate loads), without the optimizer state.
    _, restored = source.restore(cfg, make_mesh(cfg.mesh, jax.devices()[:1]))
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), restored, params)
    main(["to-torch", "--checkpoint", str(run), "--step", "5", "--out", str(tmp_path / "t.safetensors")])
    ours, reference = all_tensors(tmp_path / "t.safetensors"), all_tensors(root / "torch")
    assert sorted(ours) == sorted(reference)
    for key, value in reference.items():
        assert np.array_equal(ours[key], value), key


@pytest.mark.slow
def test_training_starts_from_a_model_checkpoint(demo_root, tmp_path):
    """train.init_from = a model checkpoint: with lr 0 the run's first checkpoint holds
    exactly its params (read back through the run-directory export path)."""
    from helpers import demo_config

    from bagpiper_jax.checkpoint.model_checkpoint import FrozenModules, save_model_checkpoint
    from bagpiper_jax.model.create import init_model
    from bagpiper_jax.train.trainer import train

    cfg = demo_config(
        demo_root,
        f"run_dir={tmp_path}/run",
        f"train.init_from={tmp_path}/init",
        "train.steps=1",
        "train.lr=0.0",
        "train.eval_every=1000",
    )
    _, params, _ = init_model(cfg.model, cfg.runtime, make_mesh(cfg.mesh), cfg.mesh.rules, seed=7)
    save_model_checkpoint(tmp_path / "init", cfg, params, FrozenModules(), source="test")
    train(cfg, progress=False)
    source = ParamsSource(tmp_path / "run")
    assert source.step == 1
    for path, value in nnx.to_flat_state(params):
        np.testing.assert_array_equal(source.read(".".join(map(str, path))), np.asarray(value.get_raw_value()))
