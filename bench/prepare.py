"""Throughput of ``bagpiper-prepare`` and the bytes a stored audio-hour costs; one JSON line.

Prepares the demo corpus's training manifest (built if missing) split into 4 parts, as 2
simulated processes (each prepares its work units, then process 0 assembles the index),
with the demo's tiny random codec on this host's devices. Reports examples/s and seconds
of audio prepared per second (user audio to FLAC, assistant audio through the codec), and
the bytes per hour of stored user audio: FLAC now, float32 log-mel before (128 bins x 100
frames/s x 4 bytes = 184.3 MB per hour).

    python bench/prepare.py [--config configs/demo.yaml] [--parts 4] [--processes 2]
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

from bagpiper_jax.audio_io import SAMPLE_RATE
from bagpiper_jax.config import load_config
from bagpiper_jax.data.demo import ensure_demo_prepared
from bagpiper_jax.data.prepare import prepare_manifest
from bagpiper_jax.data.shards import read_index, read_records

MEL_BYTES_PER_HOUR = 128 * 100 * 4 * 3600  # float32 log-mel, what records held before FLAC


def stored_audio(out: Path) -> tuple[int, float, float]:
    """(user-audio FLAC bytes, user-audio seconds, assistant-audio seconds) of a prepared directory."""
    index = read_index(out)
    flac_bytes, user_s, codes_s = 0, 0.0, 0.0
    for shard in index.shards:
        for record in read_records(index.records_path(shard), list(range(shard.count))):
            for m in record.messages:
                if m.kind == "flac":
                    flac_bytes, user_s = flac_bytes + m.array.nbytes, user_s + m.samples / SAMPLE_RATE
                elif m.kind == "codes":
                    codes_s += len(m.array) / 50  # XCodec: 50 frames per second
    return flac_bytes, user_s, codes_s


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--parts", type=int, default=4)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    cfg = load_config(args.config, args.overrides)
    ensure_demo_prepared(cfg)
    lines = (Path(cfg.data.prepared).parent / "corpus" / "manifest.jsonl").read_text().splitlines()
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "manifest"
        manifest.mkdir()
        corpus = Path(cfg.data.prepared).parent.absolute() / "corpus"
        for k in range(args.parts):
            part = [json.loads(line) for line in lines[k :: args.parts]]
            for ex in part:  # audio paths relative to the corpus, wherever the parts are
                for key in [k for k in ex if k.startswith("audio")]:
                    ex[key] = str(corpus / ex[key])
                for turn in ex.get("dialogue", []):
                    if turn[1] == "audio":
                        turn[2] = str(corpus / turn[2])
            (manifest / f"part-{k}.jsonl").write_text("\n".join(map(json.dumps, part)) + "\n")
        out = Path(tmp) / "prepared"
        seconds = []
        for process in reversed(range(args.processes)):  # process 0 last: it assembles the index
            start = time.perf_counter()
            report = prepare_manifest(
                cfg, manifest, out, process_index=process, process_count=args.processes, progress=False
            )
            seconds.append(time.perf_counter() - start)
        flac_bytes, user_s, codes_s = stored_audio(out)
    total = sum(seconds)
    print(
        json.dumps(
            {
                "what": "prepare",
                "parts": args.parts,
                "processes": args.processes,
                "examples": report["prepared"],
                "seconds": round(total, 1),
                "seconds_per_process": [round(s, 1) for s in reversed(seconds)],
                "examples_per_s": round(report["prepared"] / total, 1),
                "audio_seconds_per_s": round((user_s + codes_s) / total, 1),
                "user_audio_hours": round(user_s / 3600, 4),
                "stored_bytes_per_audio_hour": round(flac_bytes / (user_s / 3600)),
                "before_bytes_per_audio_hour": MEL_BYTES_PER_HOUR,
                "ratio": round(flac_bytes / (user_s / 3600) / MEL_BYTES_PER_HOUR, 3),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
