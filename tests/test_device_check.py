"""bench/device_check.py's machinery: time-boxed parts whose failures are recorded, the
choice of the faster attention kernel, the results file. The parts themselves are
rehearsed by ``bash bench/device_check.sh --smoke`` (minutes, so not in the test suite)."""

import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("device_check", REPO / "bench" / "device_check.py")
device_check = sys.modules["device_check"] = importlib.util.module_from_spec(spec)  # (dataclasses look it up)
spec.loader.exec_module(device_check)


def run_code(code: str, tmp_path: Path, limit_s: float = 60) -> dict:
    with (tmp_path / "parts.log").open("a") as log:
        part = device_check.Part("p", ("-c", code), limit_s)
        return device_check.run_part(part, limit_s, device_check.SMOKE, log)


def test_a_part_keeps_the_last_json_line_of_its_output(tmp_path):
    record = run_code("import json; print('compiling'); print(json.dumps({'mfu': 0.5})); print('done')", tmp_path)
    assert record["ok"] and record["result"] == {"mfu": 0.5} and record["argv"][0] == "-c"


def test_a_failing_part_is_recorded_with_its_error(tmp_path):
    record = run_code("import sys; print('half', file=sys.stderr); sys.exit('kernel not supported')", tmp_path)
    assert not record["ok"] and record["rc"] == 1
    assert "half" in record["error"] and "kernel not supported" in record["error"]
    assert not run_code("print('no json here')", tmp_path)["ok"]


def test_a_slow_part_is_stopped_at_its_limit_with_its_children(tmp_path):
    # The child holds the part's stdout open: only killing the whole group ends the wait.
    t0 = time.monotonic()
    record = run_code("import subprocess; subprocess.run(['sleep', '60'])", tmp_path, limit_s=1)
    assert time.monotonic() - t0 < 20
    assert not record["ok"] and record["error"].startswith("timed out after 1 s")


def test_the_follow_ups_run_the_faster_kernel_that_worked():
    cudnn, pallas = (p.name for p in device_check.kernel_parts(device_check.GPU))
    assert cudnn == "mfu_cudnn_dots_4096x2"

    def records(cudnn_mfu, pallas_mfu):
        env = {"part": "env", "ok": True, "result": {"device": "NVIDIA H200"}}
        return [env] + [
            {"part": name, "ok": mfu is not None, "result": {"mfu": mfu}}
            for name, mfu in ((cudnn, cudnn_mfu), (pallas, pallas_mfu))
        ]

    assert device_check.faster_attention(records(0.5, 0.6), device_check.GPU) == "pallas_gpu"
    assert device_check.faster_attention(records(0.5, None), device_check.GPU) == "cudnn"
    assert device_check.faster_attention(records(None, None), device_check.GPU) is None


def test_out_of_budget_parts_are_skipped_and_summarised(tmp_path, capsys):
    out = tmp_path / "results.jsonl"
    assert device_check.main(["--smoke", "--budget", "1", "--out", str(out)]) == 1
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines == [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["part"] for r in lines] == ["env", "abort", "summary"]
    assert "of the budget left" in lines[0]["skipped"]
    assert lines[-1]["failed"] == ["env", "abort"] and lines[-1]["log"] == str(out.with_suffix(".log"))


def test_every_part_runs_a_script_of_the_repository():
    for sizes in (device_check.GPU, device_check.SMOKE):
        parts = [
            *device_check.anchor_parts(sizes),
            *device_check.kernel_parts(sizes),
            *device_check.follow_up_parts(sizes, "cudnn"),
            *device_check.module_parts(sizes),
        ]
        assert len({p.name for p in parts}) == len(parts)
        for part in parts:
            assert (REPO / part.argv[0]).is_file(), part


@pytest.mark.parametrize("name", ["torch_qwen3_step.py", "jax_plain_step.py"])
def test_the_anchor_scripts_are_verbatim_copies(name):
    shared = REPO.parent / "shared" / "anchors" / name
    if not shared.is_file():
        pytest.skip(f"no {shared} beside this checkout")
    copy = (REPO / "bench" / "anchors" / name).read_text().splitlines(keepends=True)
    assert all(line.startswith("#") for line in copy[:2])
    assert "".join(copy[2:]) == shared.read_text()
