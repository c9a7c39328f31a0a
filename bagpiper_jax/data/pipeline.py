"""The Grain training input: prepared ArrayRecord shards -> packed, sharded global batches.

    index -> per-process slice -> shuffle (reseeded each epoch) -> decode + template + CFG
    -> first-fit packing into rows of ``row_frames`` -> batch -> (multiprocess) prefetch

Every stage is deterministic given ``data.shuffle_seed`` and Grain's iterator state, so
``get_state``/``set_state`` resume a run exactly (also with worker processes). Each
process reads a disjoint slice of the index: per epoch every kept record is seen
exactly once across all processes. Examples longer than a row are skipped (or, with
``data.overlong=truncate``, text-only ones are cut to the row); both are counted in
:attr:`InputPipeline.report` up front, from the index, before any data is read.

A packed batch is a dict of numpy arrays (``rows`` = this process's rows)::

    ids [rows, row_frames, streams] int32       segment_ids [rows, row_frames] int32 (0 = pad)
    positions [rows, row_frames] int32          loss_mask [rows, row_frames, streams] float32
    mel [rows, pieces, piece_frames, mel_bins]  mel_lengths [rows, pieces] int32 (0 = unused)
    mel_clip_lengths [rows, pieces] int32 (frames of the clip each piece was cut from)
    mel_start [rows, pieces] int32 (frame of the row where the piece's encoder tokens go)
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import grain
import grain.experimental as grain_exp
import numpy as np

from bagpiper_jax.config import DataConfig
from bagpiper_jax.data.records import RecordError, decode_record
from bagpiper_jax.data.template import TokensFor, cfg_candidates, template
from bagpiper_jax.vocab import Vocab

log = logging.getLogger(__name__)
FRAME_KEYS = ("ids", "loss_mask")
PIECE_KEYS = ("mel", "mel_lengths", "mel_clip_lengths", "mel_start")


class DataError(ValueError):
    """The prepared dataset is missing or inconsistent; names the file."""


def read_index(prepared: str | Path) -> dict:
    path = Path(prepared) / "index.json"
    if not path.is_file():
        raise DataError(f"{path} not found: run bagpiper-prepare first (data.prepared={prepared!r})")
    return json.loads(path.read_text())


@dataclasses.dataclass
class IndexedSource:
    """The records of the given global indices (a Grain random-access source)."""

    source: grain.sources.ArrayRecordDataSource
    indices: np.ndarray
    truncate: np.ndarray  # bool per index: cut to the row length

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[bytes, bool]:
        return self.source[int(self.indices[i])], bool(self.truncate[i])


@dataclasses.dataclass(frozen=True)
class Templater:
    """Record bytes -> templated example dict (None for an undecodable record)."""

    vocab: Vocab
    tokens_for: TokensFor
    piece_frames: int
    mel_bins: int
    row_frames: int
    loss_region: str
    cfg_drop: float

    def __call__(self, item: tuple[bytes, bool], rng: np.random.Generator):
        data, truncate = item
        try:
            ex = decode_record(data)
        except RecordError as e:
            log.warning("skipping record: %s", e)
            return None
        keep = None
        candidates = cfg_candidates(ex)
        if candidates and rng.random() < self.cfg_drop:
            keep = candidates[rng.integers(len(candidates))]
        out = template(ex, self.vocab, self.tokens_for, piece_frames=self.piece_frames, mel_bins=self.mel_bins,
                       loss_region=self.loss_region, cfg_keep=keep)
        if truncate:
            out["ids"], out["loss_mask"] = out["ids"][:self.row_frames], out["loss_mask"][:self.row_frames]
        return out


def finish_row(row: dict) -> dict:
    """Packer output -> batch row: shared segment ids/positions, mel starts in row frames."""
    seg = row["ids_segment_ids"].astype(np.int32)
    starts = np.full(row["mel_start"].shape, -1, np.int32)
    for j, s in enumerate(row["mel_start_segment_ids"]):
        if s:
            starts[j] = np.argmax(seg == s) + row["mel_start"][j]
    return {"ids": row["ids"], "segment_ids": seg, "positions": row["ids_positions"].astype(np.int32),
            "loss_mask": row["loss_mask"], "mel": row["mel"],
            "mel_lengths": np.where(row["mel_lengths_segment_ids"] > 0, row["mel_lengths"], 0).astype(np.int32),
            "mel_clip_lengths": row["mel_clip_lengths"].astype(np.int32), "mel_start": starts}


@dataclasses.dataclass
class InputPipeline:
    """This process's packed batches; ``report`` counts what the index made us skip."""

    dataset: grain.IterDataset
    report: dict

    def __iter__(self):
        return iter(self.dataset)


def build_pipeline(cfg: DataConfig, vocab: Vocab, tokens_for: TokensFor, mel_bins: int, *,
                   process_index: int = 0, process_count: int = 1, train: bool = True,
                   epochs: int | None = None) -> InputPipeline:
    """The pipeline of input shard ``process_index`` of ``process_count``; it yields
    ``batch_rows / process_count`` rows per batch.

    Args:
      tokens_for: mel frames -> encoder tokens (the audio encoder's length formula).
      train: CFG dropout on (with ``cfg.cfg_drop``); off for evaluation.
      epochs: ``None`` repeats forever.
    """
    if cfg.batch_rows % process_count:
        raise DataError(f"data.batch_rows={cfg.batch_rows} does not divide over {process_count} processes")
    index = read_index(cfg.prepared)
    files = [str(Path(cfg.prepared) / s["file"]) for s in index["shards"]]
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise DataError(f"prepared shards listed in {cfg.prepared}/index.json are missing: {missing}")
    frames = np.concatenate([np.asarray(s["frames"], np.int64) for s in index["shards"]] or [np.zeros(0)])
    text_only = np.concatenate([np.asarray(s["text_only"], bool) for s in index["shards"]] or [np.zeros(0, bool)])
    fits = frames <= cfg.row_frames
    truncate = ~fits & text_only & (cfg.overlong == "truncate")
    keep = np.flatnonzero(fits | truncate)
    report = {"records": int(len(frames)), "kept": int(len(keep)), "skipped_overlong": int(np.sum(~fits & ~truncate)),
              "truncated": int(truncate.sum())}
    if report["skipped_overlong"]:
        log.warning("skipping %d examples longer than data.row_frames=%d", report["skipped_overlong"], cfg.row_frames)
    mine = keep[process_index::process_count]
    if not len(mine):
        raise DataError(f"process {process_index} of {process_count} has no records in {cfg.prepared}")
    source = IndexedSource(grain.sources.ArrayRecordDataSource(files), mine, truncate[mine])
    templater = Templater(vocab, tokens_for, cfg.piece_frames, mel_bins, cfg.row_frames, cfg.loss_region,
                          cfg.cfg_drop if train else 0.0)
    ds = grain.MapDataset.source(source).shuffle(seed=cfg.shuffle_seed).repeat(epochs)
    ds = ds.random_map(templater, seed=cfg.shuffle_seed + 1).filter(lambda x: x is not None)
    lengths = {**{k: cfg.row_frames for k in FRAME_KEYS}, **{k: cfg.max_pieces_per_row for k in PIECE_KEYS}}
    it = grain_exp.FirstFitPackIterDataset(ds.to_iter_dataset(), length_struct=lengths,
                                           num_packing_bins=cfg.packing_bins, seed=cfg.shuffle_seed + 2)
    it = it.map(finish_row).batch(cfg.batch_rows // process_count, drop_remainder=epochs is None)
    if cfg.workers:
        from absl import flags  # Grain's workers read absl flags; a library caller may not parse them
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.workers,
                                                         per_worker_buffer_size=cfg.prefetch_buffer))
    return InputPipeline(it, report)


class ShardedInput:
    """This process's logical input shards, iterated together: a batch concatenates the
    shards' rows in shard order. With ``data.input_shards`` fixed, the global batches are
    the same whatever the number of processes (shard ``s`` runs on process
    ``s % process_count``). Checkpointable by Grain's Orbax handler (state as bytes)."""

    def __init__(self, pipelines: list[InputPipeline]):
        self.report = pipelines[0].report
        self._iters = [iter(p) for p in pipelines]

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        batches = [next(it) for it in self._iters]
        return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}

    def get_state(self) -> bytes:
        return json.dumps([it.get_state() for it in self._iters]).encode()

    def set_state(self, state: bytes):
        states = json.loads(state)
        if len(states) != len(self._iters):
            raise DataError(f"data-iterator state holds {len(states)} input shards, this process runs "
                            f"{len(self._iters)} (data.input_shards and the process count must match the run's)")
        for it, s in zip(self._iters, states):
            it.set_state(s)

    def start_prefetch(self):
        for it in self._iters:
            if hasattr(it, "start_prefetch"):
                it.start_prefetch()


def build_input(cfg: DataConfig, vocab: Vocab, tokens_for: TokensFor, mel_bins: int, *, process_index: int = 0,
                process_count: int = 1, train: bool = True, epochs: int | None = None) -> ShardedInput:
    """The input of one process: its logical shards of ``data.input_shards`` (default: one
    per process), each a :func:`build_pipeline` over its slice of the index."""
    shards = cfg.input_shards or process_count
    if shards % process_count:
        raise DataError(f"data.input_shards={shards} must be a multiple of the {process_count} processes")
    return ShardedInput([build_pipeline(cfg, vocab, tokens_for, mel_bins, process_index=s, process_count=shards,
                                        train=train, epochs=epochs)
                         for s in range(process_index, shards, process_count)])


def packing_efficiency(batch: dict) -> float:
    """Fraction of frames of a batch that belong to an example."""
    return float(np.mean(batch["segment_ids"] != 0))


def to_global_arrays(batch: dict, shardings: dict) -> dict:
    """This process's rows -> global ``jax.Array`` s sharded per ``shardings`` (same keys)."""
    import jax
    return {k: jax.make_array_from_process_local_data(shardings[k], v) for k, v in batch.items()}
