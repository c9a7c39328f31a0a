"""Packed frames per second delivered by the Grain pipeline, and packing efficiency; one JSON line.

Reads prepared shards (default: the demo corpus, built if missing) as a two-source mixture
(the training shards with weight 3, the held-out shards with weight 1; ``--one-source``:
the training shards alone) and times full batches of rows of ``--row-frames`` frames with
``--workers`` worker processes. User audio is stored as FLAC, so the workers decode it and
compute its log-mel.

    python bench/data_pipeline.py --config configs/demo.yaml --row-frames 8192 --workers 2

On a shared machine wall-clock throughput follows the load; ``frames_per_cpu_s`` (frames
per CPU second of this process and its workers) does not, and ``cpu_cores`` is the number
of cores the run actually got.
"""

import argparse
import dataclasses
import json
import time

import numpy as np

from bagpiper_jax.audio_encoder.config import output_lengths
from bagpiper_jax.config import SourceConfig, load_config
from bagpiper_jax.data.demo import ensure_demo_prepared
from bagpiper_jax.data.pipeline import build_pipeline, packing_efficiency
from bagpiper_jax.vocab import Vocab


def cpu_seconds() -> float:
    """CPU time of this process and its live children (the Grain workers); 0 without psutil."""
    try:
        import psutil
    except ImportError:
        return 0.0
    me = psutil.Process()
    total = 0.0
    for proc in [me, *me.children(recursive=True)]:
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def main():  # Grain workers re-import __main__: nothing may run at import time
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--row-frames", type=int, default=8192)
    p.add_argument("--batch-rows", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--pieces", type=int, default=128, help="continuous-audio pieces per row (scale with the row)")
    p.add_argument("--mel-frames", type=int, default=16384, help="log-mel frames per row (scale with the row)")
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--one-source", action="store_true", help="data.prepared alone instead of the mixture")
    p.add_argument("overrides", nargs="*")
    a = p.parse_args()
    cfg = load_config(
        a.config,
        [
            f"data.row_frames={a.row_frames}",
            f"data.batch_rows={a.batch_rows}",
            f"data.workers={a.workers}",
            f"data.max_pieces_per_row={a.pieces}",
            f"data.mel_frames_per_row={a.mel_frames}",
            *a.overrides,
        ],
    )
    ensure_demo_prepared(cfg)
    data = cfg.data
    if not a.one_source:
        sources = (SourceConfig("train", data.prepared, 3.0), SourceConfig("held", data.eval_prepared, 1.0))
        data = dataclasses.replace(data, prepared="", eval_prepared="", sources=sources)
    pipe = build_pipeline(data, Vocab.from_config(cfg.model), output_lengths, 128)
    it = iter(pipe)
    next(it)  # start-up (worker spawn, first fill) is not throughput
    cpu0 = cpu_seconds()
    t0 = time.perf_counter()
    efficiency, frames = [], 0
    for _ in range(a.batches):
        b = next(it)
        frames += b.segment_ids.size
        efficiency.append(packing_efficiency(b))
    dt = time.perf_counter() - t0
    cpu = cpu_seconds() - cpu0
    print(
        json.dumps(
            {
                "what": "data_pipeline",
                "row_frames": a.row_frames,
                "batch_rows": a.batch_rows,
                "workers": a.workers,
                "pieces": a.pieces,
                "mel_frames": a.mel_frames,
                "batches": a.batches,
                "frames_per_s": round(frames / dt, 1),
                "nonpad_frames_per_s": round(frames * float(np.mean(efficiency)) / dt, 1),
                "packing_efficiency": round(float(np.mean(efficiency)), 4),
                "sources": {name: report["kept"] for name, report in pipe.report.items()},
                "frames_per_cpu_s": round(frames / cpu, 1) if cpu else None,
                "cpu_cores": round(cpu / dt, 2) if cpu else None,
            }
        )
    )


if __name__ == "__main__":
    main()
