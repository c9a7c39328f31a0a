"""``bagpiper-eval`` end to end: a tiny model checkpoint, the demo eval set built from the
small demo corpus plus open_qa / tts items and bad items, a tiny random CLAP and ASR model;
every task gets its scores (or the reason a metric was skipped), bad items get their error
in ``results.jsonl`` and the run goes on. The slow test shows MCQ accuracy rising with
demo training."""

import json

import jax
import pytest
from eval_testing import write_tiny_asr, write_tiny_clap
from helpers import DEMO, demo_config, demo_overrides

from bagpiper_jax.checkpoint.model_checkpoint import FrozenModules, save_model_checkpoint
from bagpiper_jax.cli.eval import main as eval_main
from bagpiper_jax.eval.demo import ensure_demo_eval
from bagpiper_jax.eval.manifest import EvalItem, read_eval_manifest
from bagpiper_jax.eval.periodic import periodic_eval
from bagpiper_jax.eval.runner import MetricModels, evaluate, format_table, score_task
from bagpiper_jax.generate import Generator
from bagpiper_jax.model import init_model
from bagpiper_jax.sharding import make_mesh
from bagpiper_jax.train.trainer import train

CHOICES = ("sine tone", "major chord", "chirp", "noise burst", "silence")
# Short answers keep the random model's generations (which never end early) cheap.
SHORT = [
    "generate.max_new_frames=48",
    "generate.text.max_step=12",
    "generate.audio.min_step=10",
    "generate.audio.max_step=30",
]


def random_checkpoint(cfg, directory):
    mesh = make_mesh(cfg.mesh, jax.devices()[:1])
    _, params, _ = init_model(cfg.model, cfg.runtime, mesh, cfg.mesh.rules, cfg.seed)
    return save_model_checkpoint(directory, cfg, params, FrozenModules(), source="random init (test)")


@pytest.mark.slow
def test_eval_cli_scores_every_task_and_reports_bad_items(demo_root, tmp_path):
    """Cold, it compiles three decode programs and builds the CLAP and ASR models (~45 s)."""
    clap, asr = write_tiny_clap(tmp_path / "clap"), write_tiny_asr(tmp_path / "asr")
    overrides = [*demo_overrides(demo_root), f"assets.clap={clap}", f"assets.asr={asr}", *SHORT]
    cfg = demo_config(demo_root, *overrides)
    checkpoint = random_checkpoint(cfg, tmp_path / "ckpt")
    manifest = tmp_path / "eval.jsonl"
    ensure_demo_eval(cfg, manifest)
    demo_items = manifest.read_text().splitlines()
    assert len(demo_items) == 3 * 8  # caption, mcq and text_to_audio per held-out clip
    clip = json.loads(demo_items[0])["audio"]
    extra = [
        {"id": "qa", "task": "open_qa", "audio": clip, "question": "How loud is it?", "references": ["loud"]},
        {"id": "speech", "task": "tts", "text": "hello a loud tone"},
        {"id": "bad-clip", "task": "caption", "audio": "corpus/wav/none.wav", "references": ["x"]},
        {"id": "bad-refs", "task": "caption", "audio": clip, "references": []},
        {"id": "bad-answer", "task": "mcq", "audio": clip, "question": "q?", "choices": ["a", "b"], "answer": "c"},
    ]
    # Relative clip paths resolve against the manifest's folder.
    manifest.write_text("\n".join(demo_items[:6] + demo_items[-3:] + [json.dumps(x) for x in extra]) + "\n")
    out = tmp_path / "out"
    args = ["--checkpoint", str(checkpoint), "--config", str(DEMO), "--eval", str(manifest), "--out", str(out)]
    assert eval_main([*args, "--devices", "1", "--no-progress", *overrides]) == 0

    summary = json.loads((out / "summary.json").read_text())
    assert summary["items"] == 14 and summary["errors"] == 3
    tasks = summary["tasks"]
    assert set(tasks) == {"caption", "mcq", "open_qa", "text_to_audio", "tts"}
    assert {"bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider_d"} <= set(tasks["caption"]["scores"])
    assert "accuracy" in tasks["mcq"]["scores"]
    assert {"exact_match", "contains"} == set(tasks["open_qa"]["scores"])
    assert {"clap_score", "frechet_distance", "clap_score_reference"} == set(tasks["text_to_audio"]["scores"])
    for entry in tasks.values():
        for score in entry["scores"].values():
            assert score["n"] > 0 and score["ci95"][0] <= score["value"] <= score["ci95"][1]
    assert tasks["caption"]["errors"] == 2 and tasks["mcq"]["errors"] == 1
    assert tasks["caption"]["scores"]["bleu_1"]["n"] == 3
    assert tasks["mcq"]["scores"]["accuracy"]["n"] == 3
    assert tasks["text_to_audio"]["scores"]["frechet_distance"]["n"] == 3
    try:
        import jiwer  # noqa: F401
    except ImportError:
        assert tasks["tts"]["skipped"] == {"wer": "jiwer is not installed (pip install jiwer)"}
    else:
        assert tasks["tts"]["scores"]["wer"]["n"] == 1

    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(records) == 14 and [r["id"] for r in records[:2]] == ["caption-held00000", "mcq-held00000"]
    errors = {r["id"]: r["error"] for r in records if "error" in r}
    assert "none.wav not found" in errors["bad-clip"]
    assert "'references' must be a non-empty list" in errors["bad-refs"]
    assert "answer 'c' is not among the choices" in errors["bad-answer"]
    by_id = {r["id"]: r for r in records}
    speech = by_id["speech"]["output"]
    assert isinstance(speech["transcript"], str) and (out / "wavs" / "speech.wav").is_file()
    t2a = next(r for r in records if r["task"] == "text_to_audio")
    assert -1 <= t2a["scores"]["clap_score"] <= 1 and t2a["output"]["wav"].endswith(".wav")
    assert "correct" in by_id["mcq-held00000"]["scores"] and "extracted" in by_id["mcq-held00000"]["output"]
    assert "rouge_l" in by_id["caption-held00000"]["scores"]
    table = format_table(summary)
    assert "cider_d" in table and "frechet_distance" in table and "errors" in table


def test_an_item_that_fails_to_generate_gets_its_error_and_the_run_goes_on(demo_root, tmp_path):
    cfg = demo_config(demo_root, *SHORT)
    manifest = ensure_demo_eval(cfg, tmp_path / "eval.jsonl")
    captions = [line for line in manifest.read_text().splitlines() if '"caption"' in line][:3]
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF, but not audio")
    bad = [
        {"id": "corrupt", "task": "caption", "audio": "corrupt.wav", "references": ["a tone"]},
        {"id": "missing", "task": "caption", "audio": "none.wav", "references": ["a tone"]},
    ]
    manifest.write_text("\n".join([captions[0], *map(json.dumps, bad), *captions[1:]]) + "\n")
    items, errors = read_eval_manifest(manifest)
    assert [e.id for e in errors] == ["missing"]
    mesh = make_mesh(cfg.mesh, jax.devices()[:1])
    graphdef, params, _ = init_model(cfg.model, cfg.runtime, mesh, cfg.mesh.rules, cfg.seed)
    summary = evaluate(Generator(cfg, graphdef, params, mesh), items, errors, out_dir=tmp_path / "out", progress=False)
    caption = summary["tasks"]["caption"]
    assert summary["items"] == 5 and caption["errors"] == 2 and caption["scores"]["cider_d"]["n"] == 3
    records = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == [
        "caption-held00000",
        "corrupt",
        "missing",
        "caption-held00001",
        "caption-held00002",
    ]
    assert records[1]["error"].startswith("generation failed:") and "corrupt.wav" in records[1]["error"]
    assert "none.wav not found" in records[2]["error"]
    assert all(r["output"]["caption"] is not None and "bleu_4" in r["scores"] for r in records if "error" not in r)


def test_mcq_and_open_qa_scores_of_given_outputs():
    def mcq(kind):
        return EvalItem(f"q-{kind}", "mcq", question="q", choices=CHOICES, answer=kind, category=kind)

    items = [mcq("noise burst"), mcq("noise burst"), mcq("chirp")]
    outputs = [{"answer": "It is a noise burst."}, {"answer": "(C)"}, {"answer": "C"}]
    scored = score_task("mcq", items, outputs, MetricModels())
    assert [o["extracted"] for o in outputs] == ["noise burst", "chirp", "chirp"]
    assert [p["correct"] for p in scored["per_item"]] == [1.0, 0.0, 1.0]
    accuracy = {k: (s.value, s.n) for k, s in scored["scores"].items()}
    assert accuracy == {"accuracy": (2 / 3, 3), "accuracy/chirp": (1.0, 1), "accuracy/noise_burst": (0.5, 2)}
    qa = [EvalItem("o", "open_qa", question="q", references=("two barks", "2"))] * 3
    outputs = [{"answer": "Two barks."}, {"answer": "I heard two barks twice"}, {"answer": "three"}]
    scored = score_task("open_qa", qa, outputs, MetricModels())
    assert [(p["exact_match"], p["contains"]) for p in scored["per_item"]] == [(1.0, 1.0), (0.0, 1.0), (0.0, 0.0)]
    assert MetricModels().reasons == {} and score_task("text_to_audio", [], [], MetricModels())["skipped"]


@pytest.mark.slow
def test_train_eval_tasks_log_scores_beside_the_held_out_loss(demo_root, tmp_path):
    """Two demo steps with one eval pass (compiles the train step: ~30 s)."""
    manifest = ensure_demo_eval(demo_config(demo_root), tmp_path / "demo-eval.jsonl")
    cfg = demo_config(
        demo_root,
        *SHORT,
        f"run_dir={tmp_path / 'run'}",
        "train.steps=2",
        "train.eval_every=2",
        "train.checkpoint_every=2",
        f"train.eval_tasks=[{{manifest: {manifest}, samples: 2, name: demo}}]",  # a caption and an mcq
    )
    train(cfg, progress=False, eval_hook=periodic_eval(cfg))
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evaluation = next(r for r in records if "eval/loss" in r)
    assert evaluation["step"] == 2
    assert {"eval/demo/caption/cider_d", "eval/demo/caption/bleu_4", "eval/demo/mcq/accuracy"} <= set(evaluation)
    summary = json.loads((tmp_path / "run" / "eval" / "demo" / "step_2" / "summary.json").read_text())
    assert summary["tasks"]["mcq"]["scores"]["accuracy"]["n"] == 1
    assert list((tmp_path / "run" / "tensorboard").iterdir())


def test_periodic_eval_scores_the_params_it_is_given(demo_root, tmp_path):
    manifest = tmp_path / "made-on-first-use.jsonl"
    cfg = demo_config(
        demo_root, *SHORT, f"run_dir={tmp_path}", f"train.eval_tasks=[{{manifest: {manifest}, samples: 1}}]"
    )
    hook = periodic_eval(cfg)
    assert manifest.is_file() and [len(t.items) for t in hook.tasks] == [1]
    _, params, _ = init_model(cfg.model, cfg.runtime, make_mesh(cfg.mesh), cfg.mesh.rules, cfg.seed)  # as trained
    scores = hook(5, params)
    prefix = "made-on-first-use"
    assert {f"{prefix}/caption/cider_d", f"{prefix}/caption/bleu_4"} <= set(scores)
    assert json.loads((tmp_path / "eval" / prefix / "step_5" / "summary.json").read_text())["items"] == 1
    assert periodic_eval(demo_config(demo_root)) is None
