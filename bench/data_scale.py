"""Start-up of the training input at corpus scale, and index assembly; one JSON line.

Writes the metadata of a synthetic prepared corpus (no records: ``index.json``, a
``.meta.npy`` and ``.idhash.npy`` per shard, the unit files) of ``--examples`` examples in
``--shards`` shards, then measures in fresh processes:

- ``host``: ``build_input`` for process 0 of ``--hosts`` (one input shard per host) until
  its pipelines are ready: seconds and peak RSS;
- ``assembly``: ``bagpiper-prepare``'s index assembly over every shard (unit files,
  duplicate detection over all ids, ``index.json``): seconds and peak RSS.

    python bench/data_scale.py                                  # 300M examples, 60,000 shards, 64 hosts
    python bench/data_scale.py --examples 2000000 --shards 400  # quick
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

from bagpiper_jax.audio_encoder.config import output_lengths
from bagpiper_jax.config import Config, DataConfig
from bagpiper_jax.data.manifest import ManifestPart, WorkUnit
from bagpiper_jax.data.pipeline import build_input
from bagpiper_jax.data.prepare import assemble_index
from bagpiper_jax.data.shards import META_DTYPE, ShardEntry, write_index
from bagpiper_jax.vocab import Vocab

SHARDS_PER_UNIT = 44  # ~ a 64 MiB manifest chunk of 300-byte lines in shards of 5,000


def peak_rss_gib() -> float:
    status = Path("/proc/self/status").read_text()
    return next(int(line.split()[1]) / 2**20 for line in status.splitlines() if line.startswith("VmHWM:"))


def write_corpus(root: Path, examples: int, shards: int) -> None:
    """Synthetic metadata of every shard, the unit files and the index."""
    rng = np.random.default_rng(0)
    counts = np.full(shards, examples // shards)
    counts[: examples % shards] += 1
    (root / "units").mkdir(parents=True, exist_ok=True)
    entries = []
    for k, count in enumerate(counts):
        name = f"shard-{k // SHARDS_PER_UNIT:06d}-{k % SHARDS_PER_UNIT:04d}"
        meta = np.zeros(count, META_DTYPE)
        meta["mel_frames"] = rng.integers(0, 3000, count) * (rng.random(count) < 0.3)
        meta["pieces"] = -(-meta["mel_frames"] // 800)
        meta["frames"] = rng.integers(20, 8000, count) + output_lengths(meta["mel_frames"])
        meta["text_only"] = meta["mel_frames"] == 0
        np.save(root / f"{name}.meta.npy", meta)
        np.save(root / f"{name}.idhash.npy", rng.integers(0, 2**63, count, dtype=np.uint64))
        data = (root / f"{name}.meta.npy").read_bytes()
        entries.append(ShardEntry(name, int(count), 0, zlib.crc32(data)))
    for u in range(-(-shards // SHARDS_PER_UNIT)):
        unit = entries[u * SHARDS_PER_UNIT : (u + 1) * SHARDS_PER_UNIT]
        body = {
            "part": "synthetic",
            "start": 0,
            "end": 0,
            "lines": sum(e.count for e in unit),
            "shards": [[e.name, e.count, e.records_crc32, e.meta_crc32] for e in unit],
            "skipped": [],
        }
        (root / "units" / f"unit-{u:06d}.json").write_text(json.dumps(body))
    write_index(root, entries, "synthetic", 800, 0, np.zeros(0, np.int64))


def measure_host(root: Path, hosts: int) -> dict:
    cfg = DataConfig(prepared=str(root), row_frames=8192, batch_rows=hosts, mel_frames_per_row=32768)
    vocab = Vocab.from_config(Config().model)
    baseline = peak_rss_gib()
    start = time.perf_counter()
    data = build_input(cfg, vocab, output_lengths, 128, process_index=0, process_count=hosts)
    seconds = time.perf_counter() - start
    return {
        "host_seconds": round(seconds, 2),
        "host_peak_rss_gib": round(peak_rss_gib(), 3),
        "import_rss_gib": round(baseline, 3),
        "host_records": data.report["main"]["records"],
        "host_shards": len(range(0, len(json.loads((root / "index.json").read_text())["shards"]), hosts)),
    }


def measure_assembly(root: Path) -> dict:
    units = [
        WorkUnit(int(p.stem.split("-")[1]), ManifestPart("synthetic", 0), 0, 0)
        for p in sorted((root / "units").glob("unit-*.json"))
    ]
    cfg = Config(data=DataConfig(piece_frames=800))
    start = time.perf_counter()
    report = assemble_index(cfg, root, units)
    return {
        "assembly_seconds": round(time.perf_counter() - start, 1),
        "assembly_peak_rss_gib": round(peak_rss_gib(), 3),
        "duplicates_found": report["by_reason"].get("duplicate id", 0),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=300_000_000)
    p.add_argument("--shards", type=int, default=60_000)
    p.add_argument("--hosts", type=int, default=64)
    p.add_argument("--dir", default="", help="where to write the synthetic corpus (default: a temporary dir)")
    p.add_argument("--measure", choices=("host", "assembly"), help=argparse.SUPPRESS)  # in a fresh process
    args = p.parse_args()
    if args.measure:
        root = Path(args.dir)
        result = measure_host(root, args.hosts) if args.measure == "host" else measure_assembly(root)
        print(json.dumps(result))
        return
    with tempfile.TemporaryDirectory(dir=args.dir or None) as tmp:
        root = Path(tmp) / "prepared"
        start = time.perf_counter()
        write_corpus(root, args.examples, args.shards)
        write_s = time.perf_counter() - start
        result = {
            "what": "data_scale",
            "examples": args.examples,
            "shards": args.shards,
            "hosts": args.hosts,
            "write_seconds": round(write_s, 1),
        }
        for what in ("host", "assembly"):
            done = subprocess.run(
                [sys.executable, __file__, "--measure", what, "--dir", str(root), "--hosts", str(args.hosts)],
                capture_output=True,
                text=True,
                env={**os.environ, "JAX_PLATFORMS": "cpu"},
            )
            if done.returncode:
                raise SystemExit(done.stderr[-3000:])
            result.update(json.loads(done.stdout.strip().splitlines()[-1]))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
