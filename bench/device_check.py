"""Every accelerator measurement of the performance issue in one time-boxed run, beside its
anchors: one JSON line per part (run it through ``bench/device_check.sh``, which installs
what the machine lacks first).

Parts, in order (``--smoke``: the same parts at tiny size on the CPU, the GPU kernels
replaced by ``xla``, to rehearse the run):

- ``env``: bench/env.py (versions, devices, commit);
- ``anchor_{torch,jax}_{seq}x{batch}``: bench/anchors/ (HF torch Qwen3 and a plain JAX
  step at 8B width, 8 layers) at 4096 x 1 and x 2;
- ``mfu_{attention}_{remat}_{seq}x{rows}``: bench/mfu.py with ``runtime.attention`` cudnn
  and pallas_gpu at 4096 x 2 (remat dots), then the faster of the two (higher MFU) with
  remat dots_attention, and at 4096 x 1;
- ``generate``, ``hf_generate``: KV-cache decode at 8B width, 8 layers, batch 1 and 16 with
  guidance, ours and HF transformers ``generate`` on the same shape;
- ``audio_encoder_bfloat16`` (the train step's tower dtype), ``codec``: JAX vs HF torch,
  both on the GPU, full size;
- ``audio_encoder_float32`` (the dtype of the CPU figures), if time is left.

Each part runs in its own process under a time limit, its own cap or what is left of
``--budget`` if less; a part is skipped when less than ``--min-part`` seconds are left.
A part's record (``part``, ``ok``, ``wall_s``, ``argv``, then the script's JSON line under
``result`` or the failure under ``error``) is printed and appended to the results file
as soon as the part ends; a failure never stops the run. Results go to ``--out``, else
``$OUT/device_check.jsonl`` when ``$OUT`` is set, else
``bench/results/<date>-<device>.jsonl`` (``--smoke``: the same name in the temp directory);
the parts' stderr goes beside it (``.log``). The last line is a ``summary`` record.

    bash bench/device_check.sh                 # one GPU
    bash bench/device_check.sh --smoke         # rehearsal on the CPU, a few minutes
    python bench/device_check.py --parts 'mfu_*' --best-attention cudnn    # a subset again
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import fnmatch
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"
ERROR_CHARS = 3000  # the end of a failed part's stderr kept in its record

# Tiny HF configs for the rehearsal of the codec and audio tower parts.
TINY_XCODEC = {
    "acoustic_model_config": {
        "encoder_hidden_size": 4,
        "decoder_hidden_size": 32,
        "hidden_size": 8,
        "downsampling_ratios": [8, 5, 4, 2],
        "upsampling_ratios": [8, 5, 4, 2],
    },
    "semantic_model_config": {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "conv_dim": [16] * 7,
        "num_conv_pos_embedding_groups": 16,
    },
}
TINY_TOWER = {
    "d_model": 32,
    "encoder_layers": 2,
    "encoder_attention_heads": 4,
    "encoder_ffn_dim": 64,
    "downsample_hidden_size": 8,
    "output_dim": 16,
}


@dataclasses.dataclass(frozen=True)
class Sizes:
    """The shapes and options of one kind of run (the GPU run or the CPU rehearsal)."""

    seq: int
    budget_s: float  # the whole run
    anchor: tuple[str, ...]  # shape options of both anchor scripts
    anchor_torch: tuple[str, ...]
    anchor_jax: tuple[str, ...]
    mfu: tuple[str, ...]  # bench/mfu.py options before --rows and the overrides
    kernel_stand_in: str | None  # runs in place of every GPU attention kernel (rehearsal)
    generate: tuple[str, ...]  # bench/generate.py and bench/hf_generate.py shape options
    hf_generate: tuple[str, ...]
    codec: tuple[str, ...]
    audio_encoder: tuple[str, ...]
    limit_scale: float  # multiplies every part's cap
    env: Mapping[str, str]  # extra environment of every part


GPU = Sizes(
    seq=4096,
    budget_s=480,
    anchor=("--layers", "8", "--seq", "4096", "--peak", "989e12"),
    anchor_torch=("--device", "cuda"),
    anchor_jax=("--attn", "cudnn"),
    mfu=(),  # bench/mfu.py's defaults: configs/8b.yaml, 8 layers, seq 4096, peak 989e12
    kernel_stand_in=None,
    generate=("--config", "configs/8b.yaml", "--layers", "8", "--batch", "1,16"),
    hf_generate=("--device", "cuda", "--dtype", "bfloat16"),
    codec=("--torch-device", "cuda"),  # bench/codec.py's defaults: 2 clips of 10 s
    audio_encoder=("--torch-device", "cuda"),  # 4 clips, the longest 10 s
    limit_scale=1.0,
    env={},
)
SMOKE = Sizes(
    seq=128,
    budget_s=900,
    anchor=("--layers", "2", "--hidden", "64", "--inter", "128", "--heads", "4", "--kv", "2", "--vocab", "1560")
    + ("--seq", "128", "--steps", "1", "--peak", "1e12"),
    anchor_torch=("--device", "cpu"),
    anchor_jax=("--attn", "xla"),
    mfu=("--config", "configs/tiny.yaml", "--layers", "2", "--seq", "128", "--steps", "1", "--peak", "1e12"),
    kernel_stand_in="xla",
    generate=("--config", "configs/tiny.yaml", "--batch", "1,2", "--prompt", "8", "--frames", "8", "--repeats", "1"),
    hf_generate=("--device", "cpu", "--dtype", "bfloat16"),
    # 1 s clips: a 0.5 s clip makes XLA's CPU compile of the codec encode take minutes.
    codec=("--torch-device", "cpu", "--batch", "1", "--seconds", "1", "--repeats", "1")
    + ("--hf-config", json.dumps(TINY_XCODEC)),
    audio_encoder=("--torch-device", "cpu", "--batch", "2", "--seconds", "1", "--repeats", "1")
    + ("--hf-config", json.dumps(TINY_TOWER)),
    limit_scale=2.0,  # a shared 2-core CPU compiles slowly
    env={"JAX_PLATFORMS": "cpu"},
)


@dataclasses.dataclass(frozen=True)
class Part:
    name: str
    argv: tuple[str, ...]  # the script and its options, run with this Python from the repo root
    limit_s: float  # cap on its wall time
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)


GPU_KERNELS = ("cudnn", "pallas_gpu")  # runtime.attention choices on a GPU

# jax and torch in one process: jax leaves most of the GPU memory to torch.
SHARED_GPU = {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.4"}


def anchor_parts(sizes: Sizes) -> list[Part]:
    sides = {
        "torch": ("bench/anchors/torch_qwen3_step.py", sizes.anchor_torch),
        "jax": ("bench/anchors/jax_plain_step.py", sizes.anchor_jax),
    }
    return [
        Part(f"anchor_{side}_{sizes.seq}x{batch}", (script, *sizes.anchor, "--batch", str(batch), *options), 90)
        for batch in (1, 2)
        for side, (script, options) in sides.items()
    ]


def mfu_part(sizes: Sizes, attention: str, remat: str, rows: int) -> Part:
    kernel = sizes.kernel_stand_in or attention
    argv = ("bench/mfu.py", *sizes.mfu, "--rows", str(rows), f"runtime.attention={kernel}", f"runtime.remat={remat}")
    return Part(f"mfu_{attention}_{remat}_{sizes.seq}x{rows}", argv, 120)


def kernel_parts(sizes: Sizes) -> list[Part]:
    """Each GPU attention kernel at two rows, remat ``dots``."""
    return [mfu_part(sizes, attention, "dots", 2) for attention in GPU_KERNELS]


def follow_up_parts(sizes: Sizes, attention: str) -> list[Part]:
    """The faster kernel with remat ``dots_attention``, and at one row."""
    return [mfu_part(sizes, attention, "dots_attention", 2), mfu_part(sizes, attention, "dots", 1)]


def module_parts(sizes: Sizes) -> list[Part]:
    """Decode, then the codec and audio tower, each beside its HF torch anchor."""
    audio = ("bench/audio_encoder.py", *sizes.audio_encoder)
    return [
        Part("generate", ("bench/generate.py", *sizes.generate), 150),
        Part("hf_generate", ("bench/hf_generate.py", *sizes.generate, *sizes.hf_generate), 90),
        Part("audio_encoder_bfloat16", (*audio, "--dtype", "bfloat16"), 75, SHARED_GPU),
        Part("codec", ("bench/codec.py", *sizes.codec), 90, SHARED_GPU),
        Part("audio_encoder_float32", (*audio, "--dtype", "float32"), 60, SHARED_GPU),
    ]


def faster_attention(records: Sequence[dict], sizes: Sizes) -> str | None:
    """The kernel whose :func:`kernel_parts` record has the higher MFU (None if both failed)."""
    ok = {r["part"]: r["result"] for r in records if r["ok"]}
    mfu = {attention: ok[p.name]["mfu"] for attention, p in zip(GPU_KERNELS, kernel_parts(sizes)) if p.name in ok}
    return max(mfu, key=mfu.get) if mfu else None


def last_json_line(text: str) -> dict | None:
    for line in reversed(text.splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def run_part(part: Part, limit_s: float, sizes: Sizes, log) -> dict:
    """Runs ``part`` for at most ``limit_s`` seconds (its whole process group is killed
    then); returns its record."""
    argv = [sys.executable, *part.argv]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **sizes.env, **part.env}
    log.write(f"===== {part.name}: {' '.join(argv)}\n")
    log.flush()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True
    )
    try:
        stdout, _ = proc.communicate(timeout=limit_s)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, _ = proc.communicate()
        rc = None
    wall_s = round(time.perf_counter() - t0, 1)
    log.write(stdout)
    log.flush()
    record = {"part": part.name, "ok": False, "wall_s": wall_s, "argv": list(part.argv)}
    result = last_json_line(stdout)
    if rc == 0 and result is not None:
        return {**record, "ok": True, "result": result}
    if rc is None:
        return {**record, "error": f"timed out after {limit_s:.0f} s; its log ends: {log_tail(log.name)}"}
    return {**record, "rc": rc, "error": log_tail(log.name) if rc else "no JSON line in its output"}


def log_tail(path: str) -> str:
    with open(path) as f:
        text = f.read()
    return text[text.rfind("===== ") :][-ERROR_CHARS:]


def skipped(part: Part, why: str) -> dict:
    return {"part": part.name, "ok": False, "skipped": why, "argv": list(part.argv)}


def results_path(out: str | None, smoke: bool, device: str) -> Path:
    if out:
        return Path(out)
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"]) / "device_check.jsonl"
    name = f"{datetime.date.today().isoformat()}-{re.sub(r'[^a-z0-9]+', '-', device.lower()).strip('-')}"
    return Path(tempfile.gettempdir()) / f"{name}-smoke.jsonl" if smoke else RESULTS_DIR / f"{name}.jsonl"


class Run:
    """The records of one run: printed, appended to the results file, counted against the
    budget; the parts' stderr and stdout go to the log beside the results file."""

    def __init__(self, args, sizes: Sizes):
        self.args, self.sizes = args, sizes
        self.deadline = time.monotonic() + (args.budget or sizes.budget_s)
        self.records: list[dict] = []
        self.path: Path | None = None  # named by the first record, env's (the device)
        fd, name = tempfile.mkstemp(suffix=".log")
        os.close(fd)
        self.log = open(name, "a")  # noqa: SIM115 (moved beside the results by record(), closed by finish())

    def selected(self, part: Part) -> bool:
        return part.name == "env" or any(fnmatch.fnmatch(part.name, p) for p in self.args.parts.split(","))

    def run(self, part: Part, **fields) -> dict | None:
        """Runs ``part`` if selected and time is left; records it (with ``fields``)."""
        if not self.selected(part):
            return None
        left = self.deadline - time.monotonic()
        if left < self.args.min_part:
            return self.record(skipped(part, f"{max(left, 0):.0f} s of the budget left"))
        limit_s = min(part.limit_s * self.sizes.limit_scale, left)
        return self.record({**run_part(part, limit_s, self.sizes, self.log), **fields})

    def record(self, record: dict) -> dict:
        if self.path is None:
            device = record["result"]["device"] if record["ok"] else "unknown"
            self.path = results_path(self.args.out, self.args.smoke, device)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.move_log(self.path.with_suffix(".log"))
        self.records.append(record)
        line = json.dumps(record)
        print(line, flush=True)
        with self.path.open("a") as f:
            f.write(line + "\n")
        return record

    def move_log(self, path: Path) -> None:
        self.log.close()
        with open(self.log.name) as src, path.open("a") as dst:
            dst.write(src.read())
        os.unlink(self.log.name)
        self.log = path.open("a")

    def finish(self, best: str | None) -> int:
        failed = [r["part"] for r in self.records if not r["ok"]]
        self.record(
            {
                "part": "summary",
                "ok": not failed,
                "smoke": self.args.smoke,
                "parts": len(self.records),
                "failed": failed,
                "best_attention": best,
                "results": str(self.path),
                "log": self.log.name,
            }
        )
        self.log.close()
        return 1 if failed else 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="every part at tiny size on the CPU")
    p.add_argument("--budget", type=float, default=0.0, help="seconds for the whole run (default: 480; smoke 900)")
    p.add_argument("--min-part", type=float, default=20.0, help="skip a part when fewer seconds are left")
    p.add_argument("--parts", default="*", help="comma-separated name patterns of the parts to run (env always)")
    p.add_argument("--best-attention", help="the attention kernel of the follow-ups when its MFU parts are not run")
    p.add_argument("--out", help="results file (default: see the module docstring)")
    p.add_argument("--install", default="", help="how the packages were installed (kept in the env record)")
    args = p.parse_args(argv)
    sizes = SMOKE if args.smoke else GPU
    run = Run(args, sizes)
    env = run.run(Part("env", ("bench/env.py",), 60), **({"install": args.install} if args.install else {}))
    if not env["ok"] or (not args.smoke and env["result"]["jax_backend"] != "gpu"):
        why = "bench/env.py failed" if not env["ok"] else f"JAX runs on {env['result']['jax_backend']}, not a GPU"
        run.record({"part": "abort", "ok": False, "error": why})
        return run.finish(None)
    for part in [*anchor_parts(sizes), *kernel_parts(sizes)]:
        run.run(part)
    best = args.best_attention or faster_attention(run.records, sizes)
    for part in follow_up_parts(sizes, best or "best"):
        if best:
            run.run(part)
        elif run.selected(part):
            run.record(skipped(part, "no MFU result for cudnn or pallas_gpu to choose the faster from"))
    for part in module_parts(sizes):
        run.run(part)
    return run.finish(best)


if __name__ == "__main__":
    sys.exit(main())
