"""Fault injection: damaged checkpoints, re-runs with other inputs, long clips, preemption,
two trainers on one run, resumes with another model, and the raw failures every command
turns into one line (README, Failures and recovery). Each test reproduces the fault and
checks what the user gets: the fallback step and its warning, the refusal naming the
cause, the exit code, the memory bound or identical codes."""

import json
import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf
import yaml
from helpers import DEMO, TINY, demo_config, demo_overrides

from bagpiper_jax.checkpoint.frozen_modules import load_codec
from bagpiper_jax.checkpoint.integrity import MANIFEST
from bagpiper_jax.checkpoint.run import NonFiniteStateError, RunCheckpoints
from bagpiper_jax.cli import codec as codec_cli
from bagpiper_jax.cli import convert, generate, prepare, train
from bagpiper_jax.codec.tokenizer import XCodecTokenizer
from bagpiper_jax.config import ConfigError, to_dict
from bagpiper_jax.data.pipeline import build_input
from bagpiper_jax.data.prepare import prepare_manifest
from bagpiper_jax.data.provenance import PreparationMismatch, check_sources
from bagpiper_jax.data.shards import DataError, read_index
from bagpiper_jax.locks import DirectoryLock, LockedError
from bagpiper_jax.train.preemption import sigterm_requests_stop, stop_requested
from bagpiper_jax.train.trainer import train as run_training
from bagpiper_jax.vocab import Vocab

COMMON = ["train.log_every=1", "train.eval_every=100", "train.checkpoint_every=2", "train.keep_checkpoints=3"]


def losses(run_dir: Path) -> dict[int, float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}


def steps(run_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())


def one_line(capsys, prog: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith(f"{prog}: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def trained(demo_root, tmp_path_factory) -> Path:
    """A demo run of 6 steps with checkpoints at 2, 4 and 6."""
    run = tmp_path_factory.mktemp("faults") / "run"
    run_training(demo_config(demo_root, f"run_dir={run}", "train.steps=6", *COMMON), progress=False)
    assert steps(run) == [2, 4, 6]
    return run


def copy_run(trained: Path, tmp_path: Path) -> Path:
    """A copy of the trained run whose stored config points at the copy."""
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    stored = json.loads((run / "config_resolved.json").read_text())
    stored["run_dir"] = str(run)
    (run / "config_resolved.json").write_text(json.dumps(stored))
    return run


def largest_data_file(step_dir: Path) -> Path:
    return max((p for p in (step_dir / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def corrupt(path: Path) -> None:
    """Overwrites 64 bytes in the middle of ``path``."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(x ^ 0xFF for x in data[middle : middle + 64])
    path.write_bytes(bytes(data))


# --- 1. Checkpoint integrity --------------------------------------------------------------


def test_damaged_steps_fall_back_to_the_newest_intact_one(demo_root, trained, tmp_path, caplog):
    """Step 6 has 64 bytes overwritten, step 4 lost a file: the resume warns naming both
    files, moves them to damaged/, restores step 2 (kept, though older) and retrains steps
    3..6 bit-identically."""
    run = copy_run(trained, tmp_path)
    changed = largest_data_file(run / "checkpoints" / "6")
    corrupt(changed)
    deleted = largest_data_file(run / "checkpoints" / "4")
    deleted.unlink()
    with caplog.at_level(logging.WARNING):
        run_training(demo_config(demo_root, f"run_dir={run}", "train.steps=6", *COMMON), progress=False)
    warnings = caplog.text
    assert f"{changed} does not match its checksum" in warnings and f"{deleted} is missing" in warnings
    assert sorted(p.name for p in (run / "checkpoints" / "damaged").iterdir()) == ["4", "6"]
    assert steps(run) == [2, 4, 6]  # step 2 restored and kept, 4 and 6 saved again
    before, after = losses(trained), losses(run)
    assert [after[s] for s in range(3, 7)] == [before[s] for s in range(3, 7)]


def test_export_generate_and_check_refuse_a_damaged_checkpoint(demo_root, trained, tmp_path, capsys):
    run = copy_run(trained, tmp_path)
    changed = largest_data_file(run / "checkpoints" / "6")
    corrupt(changed)
    assert convert.main(["to-torch", "--checkpoint", str(run), "--out", str(tmp_path / "t.safetensors")]) == 1
    assert f"{changed} does not match its checksum" in one_line(capsys, "bagpiper-convert to-torch")
    assert not (tmp_path / "t.safetensors").exists()
    assert convert.main(["check", "--checkpoint", str(run), "--torch", str(tmp_path / "none.pt")]) == 1
    assert str(changed) in one_line(capsys, "bagpiper-convert check")
    argv = ["--checkpoint", str(run), "--config", str(DEMO), "--text", "a tone", "--out", str(tmp_path / "o.wav")]
    assert generate.main([*argv, *demo_overrides(demo_root)]) == 1
    assert str(changed) in one_line(capsys, "bagpiper-generate")
    # An intact step is still exported.
    out = tmp_path / "step4.safetensors"
    assert convert.main(["to-torch", "--checkpoint", str(run), "--step", "4", "--out", str(out)]) == 0
    assert out.is_file()


def test_a_model_checkpoint_is_sealed_and_checked(demo_root, trained, tmp_path, capsys):
    """from-torch writes checksums; a changed params file is refused by the next reader."""
    out = tmp_path / "t.safetensors"
    assert convert.main(["to-torch", "--checkpoint", str(trained), "--out", str(out)]) == 0
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(to_dict(demo_config(demo_root))))
    ckpt = tmp_path / "ckpt"
    argv = ["from-torch", "--torch", str(out), "--config", str(config), "--out", str(ckpt)]
    assert convert.main([*argv]) == 0
    assert (ckpt / "params" / MANIFEST).is_file()
    changed = max((p for p in (ckpt / "params").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    corrupt(changed)
    capsys.readouterr()
    assert convert.main(["to-torch", "--checkpoint", str(ckpt), "--out", str(tmp_path / "again.safetensors")]) == 1
    assert f"model checkpoint is damaged: {changed}" in one_line(capsys, "bagpiper-convert to-torch")


def test_a_non_finite_state_is_never_saved(tmp_path):
    import grain

    ckpts = RunCheckpoints(tmp_path / "checkpoints", keep=2)
    data = iter(grain.MapDataset.range(4).to_iter_dataset())
    state = {"params": {"w": jnp.asarray([1.0, jnp.nan]), "b": jnp.zeros(2)}, "step": jnp.asarray(3)}
    with pytest.raises(NonFiniteStateError, match=r"refusing to checkpoint step 3: .*\['params'\]\['w'\]"):
        ckpts.save(3, state, data, demo_config(tmp_path), 0)
    finite = {"params": {"w": jnp.ones(2), "b": jnp.zeros(2)}, "step": jnp.asarray(3)}
    assert ckpts.save(3, finite, data, demo_config(tmp_path), 0)
    assert not ckpts.save(3, finite, data, demo_config(tmp_path), 0)  # saved already: no second save
    ckpts.close()
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["3"]


# --- 2. Idempotent preparation -------------------------------------------------------------


def text_manifest(path: Path, n: int) -> Path:
    lines = [json.dumps({"id": f"t{i}", "task": "text_only", "text1": f"line {i}"}) for i in range(n)]
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_a_rerun_with_other_inputs_is_refused_unless_overwrite(demo_root, tmp_path, capsys):
    manifest = text_manifest(tmp_path / "m.jsonl", 40)
    out = tmp_path / "out"
    cfg = demo_config(demo_root, "data.examples_per_shard=4")
    assert prepare_manifest(cfg, manifest, out, progress=False)["prepared"] == 40
    with pytest.raises(PreparationMismatch, match=r"data.examples_per_shard 4 -> 5"):
        prepare_manifest(demo_config(demo_root, "data.examples_per_shard=5"), manifest, out, progress=False)
    with pytest.raises(PreparationMismatch, match=r"data.row_frames 256 -> 200"):
        prepare_manifest(demo_config(demo_root, "data.examples_per_shard=4", "data.row_frames=200"), manifest, out)
    text_manifest(manifest, 50)
    with pytest.raises(PreparationMismatch, match=rf"manifest part {manifest} changed \(size"):
        prepare_manifest(cfg, manifest, out, progress=False)
    argv = ["--config", str(DEMO), "--manifest", str(manifest), "--out", str(out), *demo_overrides(demo_root)]
    assert prepare.main([*argv, "data.examples_per_shard=3"]) == 1
    assert "data.examples_per_shard 4 -> 3" in one_line(capsys, "bagpiper-prepare")
    assert prepare.main([*argv, "data.examples_per_shard=3", "--overwrite"]) == 0
    index = read_index(out)
    assert index.examples == 50 and {s.count for s in index.shards[:-1]} == {3}
    assert {p.name.split(".")[0] for p in out.glob("shard-*")} == {s.name for s in index.shards}  # no old shard left


def test_the_trainer_refuses_data_prepared_for_another_model(demo_root):
    with pytest.raises(PreparationMismatch, match=r"model.text_vocab_size=1024 there, 2048 in the run's config"):
        check_sources(demo_config(demo_root, "model.text_vocab_size=2048"))
    check_sources(demo_config(demo_root))  # the config it was prepared with


def test_two_preparations_into_one_directory_exclude_each_other(demo_root, tmp_path):
    manifest = text_manifest(tmp_path / "m.jsonl", 4)
    held = pytest.raises(LockedError, match=rf"in use by pid {os.getpid()} on host {socket.gethostname()}")
    with DirectoryLock(tmp_path / "out", "prepare-0"), held:
        prepare_manifest(demo_config(demo_root), manifest, tmp_path / "out", progress=False)


@pytest.mark.slow
def test_bagpiper_prepare_shares_the_work_over_processes_from_the_environment(demo_root, tmp_path):
    """Two bagpiper-prepare processes started with the BAGPIPER_* environment (as
    bagpiper-train) prepare disjoint work units into one directory: the index equals one
    process's."""
    manifest = text_manifest(tmp_path / "m.jsonl", 40)
    layout = ["data.manifest_chunk_bytes=300", "data.examples_per_shard=4"]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "bagpiper_jax.cli.prepare", "--config", str(DEMO), "--manifest", str(manifest)]
    cmd += ["--out", str(tmp_path / "two"), *demo_overrides(demo_root), *layout]
    env = {"BAGPIPER_COORDINATOR": f"127.0.0.1:{port}", "BAGPIPER_NUM_PROCESSES": "2", "JAX_PLATFORMS": "cpu"}
    envs = [{**os.environ, **env, "BAGPIPER_PROCESS_ID": str(i)} for i in range(2)]
    procs = [subprocess.Popen(cmd, env=e, stdout=subprocess.PIPE, text=True) for e in envs]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert json.loads(outs[0].strip().splitlines()[-1])["prepared"] == 40
    units = sorted(json.loads(u.read_text())["start"] for u in (tmp_path / "two" / "units").iterdir())
    assert len(units) > 4 and len(set(units)) == len(units)
    prepare_manifest(demo_config(demo_root, *layout), manifest, tmp_path / "one", progress=False)
    one, two = read_index(tmp_path / "one"), read_index(tmp_path / "two")
    assert one.shards == two.shards and one.examples == two.examples == 40


# --- 3. Long audio --------------------------------------------------------------------------


def test_windowed_encoding_gives_the_codes_of_the_whole_clip(demo_root):
    model = load_codec(demo_root / "demo" / "codec")
    rng = np.random.default_rng(0)
    t = np.arange(16000 * 7 + 123) / 16000
    wav = (0.3 * np.sin(2 * np.pi * (200 + 300 * t) * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)
    whole = XCodecTokenizer(model, batch_size=1, long_clip_frames=10**9).encode([wav])[0]
    windowed = XCodecTokenizer(model, batch_size=1, long_clip_frames=10, window_frames=32).encode([wav])[0]
    assert windowed.shape == whole.shape == (model.cfg.num_frames(len(wav)), 8) and len(whole) > 32 * 8
    np.testing.assert_array_equal(windowed, whole)


def test_a_clip_longer_than_a_row_is_skipped_before_the_codec(demo_root, tmp_path, monkeypatch):
    noise = np.random.default_rng(0).integers(-3000, 3000, 16000 * 600).astype(np.int16)
    sf.write(tmp_path / "long.wav", noise, 16000)  # 10 minutes
    sf.write(tmp_path / "short.wav", 0.1 * np.ones(16000, np.float32), 16000)
    lines = [
        {"id": "long", "task": "text_to_audio", "text1": "a long silence", "audio1": "long.wav"},
        {"id": "short", "task": "text_to_audio", "text1": "a short hum", "audio1": "short.wav"},
    ]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    encoded = []
    real = XCodecTokenizer.encode
    monkeypatch.setattr(XCodecTokenizer, "encode", lambda self, wavs: encoded.append(len(wavs[0])) or real(self, wavs))
    report = prepare_manifest(demo_config(demo_root), tmp_path / "m.jsonl", tmp_path / "out", progress=False)
    assert report["prepared"] == 1 and report["by_reason"] == {"over-long": 1}
    assert encoded == [16000]  # only the short clip reached the codec


# Runs a module as __main__ and prints its peak RSS (VmHWM: of this process image only; a
# child's ru_maxrss would include its parent's RSS from before the exec).
PEAK = """import runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
finally:
    print("VmHWM", next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM")))
"""


def peak_rss_mb(module: str, args: list[str], env: dict) -> tuple[int, float, str]:
    """Runs ``python -m module args``; returns (exit status, peak RSS in MB, output)."""
    done = subprocess.run([sys.executable, "-c", PEAK, module, *args], env=env, capture_output=True, text=True)
    peak = int(done.stdout.split("VmHWM")[-1]) / 1024
    return done.returncode, peak, done.stdout + done.stderr


@pytest.mark.slow
def test_a_ten_minute_clip_encodes_in_bounded_memory(demo_root, tmp_path):
    """bagpiper-codec encode of 10 minutes (30,000 frames: whole, HuBERT's attention scores
    alone would take 7 GB with this codec's 2 heads) peaks under 1 GB."""
    rng = np.random.default_rng(0)
    sf.write(tmp_path / "long.wav", (3000 * rng.standard_normal(16000 * 600)).astype(np.int16), 16000)
    args = ["encode", "--codec", str(demo_root / "demo" / "codec"), str(tmp_path / "long.wav"), str(tmp_path / "c.npy")]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device, as a user's process
    status, peak, out = peak_rss_mb("bagpiper_jax.cli.codec", args, env)
    assert status == 0, out
    assert np.load(tmp_path / "c.npy").shape == (30000, 8)
    print(f"peak RSS {peak:.0f} MB")
    assert peak < 1024


# --- 4. Preemption ----------------------------------------------------------------------------


def test_sigterm_sets_the_stop_flag_instead_of_killing():
    with sigterm_requests_stop():
        with sigterm_requests_stop():  # nested: one flag
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.1)
        assert stop_requested()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def launch_train(root: Path, run: Path, *overrides: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "bagpiper_jax.cli.train", "--config", str(DEMO), "--no-progress"]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen(
        [*cmd, *demo_overrides(root), f"run_dir={run}", *overrides],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_until(predicate, proc, timeout=600):
    end = time.time() + timeout
    while time.time() < end and proc.poll() is None:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(proc.stdout.read()[-3000:] if proc.poll() is not None else "timed out")


@pytest.mark.slow
def test_sigterm_at_a_checkpoint_step_and_during_start_up_exit_zero(demo_root, tmp_path):
    """Every step is a checkpoint step: the SIGTERM lands on one, the run saves nothing twice
    and exits 0 within a step or two. A SIGTERM during start-up (before the compile ends)
    exits 0 after a step-0 checkpoint."""
    run = tmp_path / "run"
    proc = launch_train(demo_root, run, "train.steps=1000", "train.checkpoint_every=1", "train.log_every=1")
    wait_until(lambda: (run / "metrics.jsonl").is_file() and len(losses(run)) >= 3, proc)
    sent = len(losses(run))
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["preempted"] and summary["step"] <= sent + 2
    assert max(steps(run)) == summary["step"]
    start = tmp_path / "start"
    proc = launch_train(demo_root, start, "train.steps=10")
    wait_until(lambda: (start / ".train.lock").is_file(), proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    summary = json.loads((start / "summary.json").read_text())
    assert summary["preempted"] and summary["step"] == 0 and "loss" not in summary
    assert steps(start) == [0]


# --- 5. One trainer per run -------------------------------------------------------------------


def test_a_second_trainer_on_a_run_is_refused_naming_the_first(demo_root, tmp_path, capsys):
    run = tmp_path / "run"
    with DirectoryLock(run, "train", "run directory"):
        argv = ["--config", str(DEMO), *demo_overrides(demo_root), f"run_dir={run}", "train.steps=2"]
        assert train.main(argv) == 1
    err = one_line(capsys, "bagpiper-train")
    assert f"{run} (run directory) is in use by pid {os.getpid()} on host {socket.gethostname()}" in err
    assert not (run / "metrics.jsonl").exists()


def test_a_stale_lock_is_taken_over(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = tmp_path / ".train.lock"
    holder = {"host": socket.gethostname(), "pid": dead.pid, "started": 0, "command": "x", "heartbeat": time.time()}
    lock.write_text(json.dumps(holder))
    with caplog.at_level(logging.WARNING), DirectoryLock(tmp_path, "train"):
        assert f"pid {dead.pid}" in caplog.text and "stale" in caplog.text
    assert lock.read_text() == ""  # released cleanly: the next taker finds no stale holder
    other = {**holder, "host": "elsewhere", "pid": 1}
    lock.write_text(json.dumps(other))
    with pytest.raises(LockedError, match="on host elsewhere"):  # a fresh heartbeat on another host
        DirectoryLock(tmp_path, "train").acquire()
    lock.write_text(json.dumps({**other, "heartbeat": time.time() - 3600}))
    DirectoryLock(tmp_path, "train").acquire().release()  # an old one is stale


# --- 6. Resume checks the whole model config ----------------------------------------------------


def test_a_resume_with_another_architecture_names_every_differing_field(demo_root, trained, tmp_path, capsys):
    run = copy_run(trained, tmp_path)
    argv = ["--config", str(DEMO), *demo_overrides(demo_root), f"run_dir={run}", "train.steps=8", *COMMON]
    with pytest.raises(ConfigError, match=r"model.rope_theta=500000.0 but .*checkpoints/6 has 10000.0"):
        train.main([*argv, "model.rope_theta=5e5", "--debug"])
    assert train.main([*argv, "model.rms_eps=1e-5", "model.hidden=64"]) == 1
    err = one_line(capsys, "bagpiper-train")
    assert "model.hidden=64 but" in err and "model.rms_eps=1e-05 but" in err
    assert steps(run) == [2, 4, 6]


# --- 7. One-line errors -----------------------------------------------------------------------


def test_batch_rows_that_do_not_split_over_the_mesh_name_the_key(demo_root, tmp_path, capsys):
    argv = ["--config", str(DEMO), *demo_overrides(demo_root), f"run_dir={tmp_path}", "data.batch_rows=6"]
    assert train.main(argv) == 1
    assert "data.batch_rows=6 does not split over the 8 batch shards" in one_line(capsys, "bagpiper-train")


def test_a_truncated_shard_is_named(demo_root, tmp_path):
    shutil.copytree(demo_root / "demo" / "prepared", tmp_path / "p")
    shard = sorted((tmp_path / "p").glob("*.array_record"))[0]
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size // 2)
    cfg = demo_config(demo_root, f"data.prepared={tmp_path}/p")
    data = build_input(cfg.data, Vocab.from_config(cfg.model), lambda n: n // 8, 128)
    with pytest.raises(DataError, match=rf"shard {shard} holds 0 records, its index lists 16"):
        for _ in range(20):
            next(data)


def test_bad_manifest_lines_are_skipped_with_their_numbers(demo_root, tmp_path):
    good = json.dumps({"id": "a", "task": "text_only", "text1": "fine"}).encode()
    lonely = json.dumps({"id": "c", "task": "dialogue", "dialogue": [["user", "text", "hello?"]]}).encode()
    (tmp_path / "m.jsonl").write_bytes(good + b"\n" + b'{"id": "b\xff\xfe"}\n' + lonely + b"\n")
    report = prepare_manifest(demo_config(demo_root), tmp_path / "m.jsonl", tmp_path / "out", progress=False)
    assert report["prepared"] == 1 and report["by_reason"] == {"not UTF-8": 1, "no assistant turn": 1}
    assert [e["where"] for e in report["inputs"]] == ["m.jsonl:2", "m.jsonl:3"]


def safetensors(path: Path, header: dict | None, data: bytes, length: int | None = None) -> Path:
    raw = json.dumps(header).encode() if header is not None else b""
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


@pytest.mark.parametrize(
    "header, data, length, message",
    [
        ({"x": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 16]}}, bytes(16), None, "needs 64 bytes"),
        ({"x": {"dtype": "F32", "shape": [400], "data_offsets": [0, 1600]}}, bytes(16), None, "outside the 16-byte"),
        (None, b"{}", 10**12, "header length 1000000000000 runs past the end"),
        ({"x": {"dtype": "F32", "shape": "?", "data_offsets": [0, 4]}}, bytes(4), None, "malformed header entry"),
    ],
)
def test_malformed_safetensors_headers_are_one_line(tmp_path, capsys, header, data, length, message):
    bad = safetensors(tmp_path / "bad.safetensors", header, data, length)
    assert convert.main(["from-torch", "--torch", str(bad), "--config", str(TINY), "--out", str(tmp_path / "o")]) == 1
    assert message in one_line(capsys, "bagpiper-convert from-torch")


def test_hf_audio_encoder_on_an_empty_directory(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert convert.main(["hf-audio-encoder", "--hf", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 1
    assert "empty/config.json not found" in one_line(capsys, "bagpiper-convert hf-audio-encoder")


def test_codec_encode_of_a_missing_codec_is_one_line(tmp_path, capsys):
    sf.write(tmp_path / "a.wav", np.zeros(16000, np.float32), 16000)
    assert codec_cli.main(["encode", "--codec", str(tmp_path / "none"), str(tmp_path / "a.wav"), "o.npy"]) == 1
    one_line(capsys, "bagpiper-codec encode")


# --- 8. Smaller ones ---------------------------------------------------------------------------


def test_a_blank_text_prompt_is_refused(demo_root, trained, tmp_path, capsys):
    argv = ["--checkpoint", str(trained), "--config", str(DEMO), "--text", "   ", "--out", str(tmp_path / "o.wav")]
    assert generate.main([*argv, *demo_overrides(demo_root)]) == 1
    assert "a text message is blank" in one_line(capsys, "bagpiper-generate")
    assert not (tmp_path / "o.wav").exists()
