"""The Grain training input: prepared ArrayRecord shards -> packed, sharded global batches.

    index -> per-process slice -> shuffle (reseeded each epoch) -> decode + template + CFG
    -> first-fit packing into rows of ``row_frames`` -> batch -> (multiprocess) prefetch

Every stage is deterministic given ``data.shuffle_seed`` and Grain's iterator state, so
``get_state``/``set_state`` resume a run exactly (also with worker processes). Each
process reads a disjoint slice of the index: per epoch every kept record is seen
exactly once across all processes. Examples longer than a row are skipped (or, with
``data.overlong=truncate``, text-only ones are cut to the row); both are counted in
:attr:`InputPipeline.report` up front, from the index, before any data is read.

A packed batch is a :class:`~bagpiper_jax.model.batch.Batch` of numpy arrays (this
process's rows of ``row_frames`` frames) whose ``pieces`` hold up to ``max_pieces_per_row``
continuous-audio pieces in ``mel_frames_per_row`` log-mel frames per row.

A row closes when its frames, its ``max_pieces_per_row`` pieces or its
``mel_frames_per_row`` log-mel frames run out; pieces of short clips cost only their own
frames, so the budgets bind on the audio actually carried, not on padded windows.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import grain
import jax
import numpy as np
from absl import flags

from bagpiper_jax.audio_encoder.pieces import MelPieces
from bagpiper_jax.config import DataConfig
from bagpiper_jax.data.packing import first_fit_pack
from bagpiper_jax.data.records import RecordError, decode_record
from bagpiper_jax.data.template import TokensFor, guidance_candidates, template
from bagpiper_jax.errors import BagpiperError
from bagpiper_jax.model.batch import Batch
from bagpiper_jax.vocab import Vocab

log = logging.getLogger(__name__)
FRAME_KEYS = ("ids", "loss_mask")
PIECE_KEYS = ("mel_offset", "mel_lengths", "mel_clip_lengths", "mel_start")  # packed as one [pieces, 4] "pieces"


class DataError(BagpiperError):
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


class EpochShuffle(grain.MapDataset):
    """Shuffles its parent with a fresh permutation per epoch (index ``i`` is element
    ``i % len`` of epoch ``i // len``; the ``repeat`` after it passes whole indices through).
    Same contract as ``MapDataset.shuffle``, at the cost of one numpy permutation per epoch
    and process instead of Grain's per-element index shuffle (a tenth of the pipeline's time)."""

    def __init__(self, parent: grain.MapDataset, seed: int):
        super().__init__(parent)
        self._seed = seed
        self._epoch, self._order = -1, None

    def __len__(self) -> int:
        return len(self._parent)

    def __str__(self) -> str:
        return f"EpochShuffle(seed={self._seed})"

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        epoch, i = divmod(index, len(self._parent))
        if epoch != self._epoch:
            self._epoch, self._order = (
                epoch,
                np.random.default_rng([self._seed % 2**63, epoch]).permutation(len(self._parent)),
            )
        return self._parent[int(self._order[i])]


@dataclasses.dataclass(frozen=True)
class Templater:
    """Record bytes -> templated example dict (None for an undecodable record)."""

    vocab: Vocab
    tokens_for: TokensFor
    piece_frames: int
    mel_bins: int
    row_frames: int
    loss_region: str
    guidance_drop: float
    max_pieces: int = 1 << 30
    max_mel_frames: int = 1 << 30
    text_token0_as_pad: bool = True
    guidance_keep_other_audio: bool = True

    def __call__(self, item: tuple[bytes, bool], rng: np.random.Generator):
        data, truncate = item
        try:
            ex = decode_record(data)
        except RecordError as e:
            log.warning("skipping record: %s", e)
            return None
        keep = None
        candidates = guidance_candidates(ex)
        if candidates and rng.random() < self.guidance_drop:
            keep = candidates[rng.integers(len(candidates))]
        out = template(
            ex,
            self.vocab,
            self.tokens_for,
            piece_frames=self.piece_frames,
            mel_bins=self.mel_bins,
            loss_region=self.loss_region,
            guidance_keep=keep,
            text_token0_as_pad=self.text_token0_as_pad,
            guidance_keep_other_audio=self.guidance_keep_other_audio,
        )
        if len(out["mel_lengths"]) > self.max_pieces or len(out["mel"]) > self.max_mel_frames:
            log.warning(
                "skipping example %s: %d continuous-audio pieces / %d log-mel frames exceed a row's "
                "data.max_pieces_per_row=%d / data.mel_frames_per_row=%d",
                ex.id,
                len(out["mel_lengths"]),
                len(out["mel"]),
                self.max_pieces,
                self.max_mel_frames,
            )
            return None
        if truncate:
            out["ids"], out["loss_mask"] = out["ids"][: self.row_frames], out["loss_mask"][: self.row_frames]
        return {
            "ids": out["ids"],
            "loss_mask": out["loss_mask"],
            "mel": out["mel"],
            "pieces": np.stack([out[k] for k in PIECE_KEYS], axis=1),
        }


def _segment_starts(segment_ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """``[max segment id + 1]``: index of the first element of each segment (0 where absent)."""
    first = np.flatnonzero((positions == 0) & (segment_ids > 0))
    table = np.zeros(int(segment_ids.max(initial=0)) + 1, np.int32)
    table[segment_ids[first]] = first
    return table


def finish_row(row: dict) -> dict:
    """Packer output -> batch row (the fields of :class:`Batch`, pieces prefixed ``mel_``):
    shared segment ids/positions, piece starts in row frames and piece offsets in the row's
    log-mel stream."""
    seg = row["ids_segment_ids"]
    pieces, piece_seg = row["pieces"], row["pieces_segment_ids"]
    used = piece_seg > 0
    frame0 = _segment_starts(seg, row["ids_positions"])
    mel0 = _segment_starts(row["mel_segment_ids"], row["mel_positions"])
    mel0 = np.pad(mel0, (0, max(0, len(frame0) - len(mel0))))
    return {
        "ids": row["ids"],
        "segment_ids": seg,
        "positions": row["ids_positions"],
        "loss_mask": row["loss_mask"],
        "mel": row["mel"],
        "mel_offset": np.where(used, mel0[piece_seg] + pieces[:, 0], 0).astype(np.int32),
        "mel_lengths": np.where(used, pieces[:, 1], 0).astype(np.int32),
        "mel_clip_lengths": np.where(used, pieces[:, 2], 0).astype(np.int32),
        "mel_start": np.where(used, frame0[piece_seg] + pieces[:, 3], -1).astype(np.int32),
    }


def _fits_audio_budget(index: dict, cfg: DataConfig, records: int) -> np.ndarray:
    """``[records]`` bool: the example's continuous-audio pieces and log-mel frames fit in one
    row (from the clips' mel lengths in the index; indexes without them pass everything and
    the templater skips, with a warning, what does not fit)."""
    if any(s.get("mel_frames") is None for s in index["shards"]):
        return np.ones(records, bool)
    clips = [c for s in index["shards"] for c in s["mel_frames"]]
    pieces = np.asarray([sum(-(-n // cfg.piece_frames) for n in c) for c in clips], np.int64)
    mel = np.asarray([sum(c) for c in clips], np.int64)
    return (pieces <= cfg.max_pieces_per_row) & (mel <= cfg.mel_frames_per_row)


def to_batch(rows: dict) -> Batch:
    """Batched :func:`finish_row` output -> :class:`Batch`."""
    return Batch(
        rows["ids"],
        rows["segment_ids"],
        rows["positions"],
        rows["loss_mask"],
        MelPieces(rows["mel"], rows["mel_offset"], rows["mel_lengths"], rows["mel_clip_lengths"], rows["mel_start"]),
    )


@dataclasses.dataclass
class InputPipeline:
    """This process's packed batches; ``report`` counts what the index made us skip."""

    dataset: grain.IterDataset
    report: dict

    def __iter__(self):
        return iter(self.dataset)


def build_pipeline(
    cfg: DataConfig,
    vocab: Vocab,
    tokens_for: TokensFor,
    mel_bins: int,
    *,
    shard_index: int = 0,
    shard_count: int = 1,
    train: bool = True,
    epochs: int | None = None,
) -> InputPipeline:
    """The pipeline of logical input shard ``shard_index`` of ``shard_count``; it yields
    ``batch_rows / shard_count`` rows per batch.

    Args:
      tokens_for: mel frames -> encoder tokens (the audio encoder's length formula).
      train: CFG dropout on (with ``cfg.guidance_drop``); off for evaluation.
      epochs: ``None`` repeats forever.
    """
    if cfg.batch_rows % shard_count:
        raise DataError(f"data.batch_rows={cfg.batch_rows} does not divide over {shard_count} input shards")
    index = read_index(cfg.prepared)
    files = [str(Path(cfg.prepared) / s["file"]) for s in index["shards"]]
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise DataError(f"prepared shards listed in {cfg.prepared}/index.json are missing: {missing}")
    frames = np.concatenate([np.asarray(s["frames"], np.int64) for s in index["shards"]] or [np.zeros(0)])
    text_only = np.concatenate([np.asarray(s["text_only"], bool) for s in index["shards"]] or [np.zeros(0, bool)])
    fits = frames <= cfg.row_frames
    truncate = ~fits & text_only & (cfg.overlong == "truncate")
    audio_fits = _fits_audio_budget(index, cfg, len(frames))
    keep = np.flatnonzero((fits | truncate) & audio_fits)
    report = {
        "records": len(frames),
        "kept": len(keep),
        "skipped_overlong": int(np.sum(~fits & ~truncate)),
        "skipped_audio_budget": int(np.sum((fits | truncate) & ~audio_fits)),
        "truncated": int(truncate.sum()),
    }
    if report["skipped_overlong"]:
        log.warning("skipping %d examples longer than data.row_frames=%d", report["skipped_overlong"], cfg.row_frames)
    if report["skipped_audio_budget"]:
        log.warning(
            "skipping %d examples with more continuous audio than a row holds (data.max_pieces_per_row=%d, "
            "data.mel_frames_per_row=%d)",
            report["skipped_audio_budget"],
            cfg.max_pieces_per_row,
            cfg.mel_frames_per_row,
        )
    mine = keep[shard_index::shard_count]
    if not len(mine):
        raise DataError(f"input shard {shard_index} of {shard_count} has no records in {cfg.prepared}")
    source = IndexedSource(grain.sources.ArrayRecordDataSource(files), mine, truncate[mine])
    templater = Templater(
        vocab,
        tokens_for,
        cfg.piece_frames,
        mel_bins,
        cfg.row_frames,
        cfg.loss_region,
        cfg.guidance_drop if train else 0.0,
        cfg.max_pieces_per_row,
        cfg.mel_frames_per_row,
        cfg.text_token0_as_pad,
        cfg.guidance_keep_other_audio,
    )
    ds = EpochShuffle(grain.MapDataset.source(source), cfg.shuffle_seed).repeat(epochs)
    ds = ds.random_map(templater, seed=cfg.shuffle_seed + 1).filter(lambda x: x is not None)
    lengths = {
        **dict.fromkeys(FRAME_KEYS, cfg.row_frames),
        "pieces": cfg.max_pieces_per_row,
        "mel": cfg.mel_frames_per_row,
    }
    # Reading is cheap next to decode + template (CPU-bound Python): threads only fight over the GIL
    # (and Grain's prefetch scans its whole buffer per element), so local shards read inline.
    read = grain.ReadOptions(num_threads=cfg.read_threads, prefetch_buffer_size=16 * cfg.read_threads)
    it = first_fit_pack(ds.to_iter_dataset(read), lengths, cfg.packing_bins, cfg.shuffle_seed + 2)
    it = it.map(finish_row).batch(cfg.batch_rows // shard_count, drop_remainder=epochs is None).map(to_batch)
    if cfg.workers:
        if not flags.FLAGS.is_parsed():  # Grain's workers read absl flags; a library caller may not parse them
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=cfg.workers, per_worker_buffer_size=cfg.prefetch_buffer)
        )
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

    def __next__(self) -> Batch:
        batches = [next(it) for it in self._iters]
        return batches[0] if len(batches) == 1 else jax.tree.map(lambda *rows: np.concatenate(rows), *batches)

    def get_state(self) -> bytes:
        return json.dumps([it.get_state() for it in self._iters]).encode()

    def set_state(self, state: bytes):
        states = json.loads(state)
        if len(states) != len(self._iters):
            raise DataError(
                f"data-iterator state holds {len(states)} input shards, this process runs "
                f"{len(self._iters)} (data.input_shards and the process count must match the run's)"
            )
        for it, s in zip(self._iters, states):
            it.set_state(s)

    def start_prefetch(self):
        for it in self._iters:
            if hasattr(it, "start_prefetch"):
                it.start_prefetch()


def build_input(
    cfg: DataConfig,
    vocab: Vocab,
    tokens_for: TokensFor,
    mel_bins: int,
    *,
    process_index: int = 0,
    process_count: int = 1,
    train: bool = True,
    epochs: int | None = None,
) -> ShardedInput:
    """The input of one process: its logical shards of ``data.input_shards`` (default: one
    per process), each a :func:`build_pipeline` over its slice of the index."""
    shards = cfg.input_shards or process_count
    if shards % process_count:
        raise DataError(f"data.input_shards={shards} must be a multiple of the {process_count} processes")
    return ShardedInput(
        [
            build_pipeline(
                cfg, vocab, tokens_for, mel_bins, shard_index=s, shard_count=shards, train=train, epochs=epochs
            )
            for s in range(process_index, shards, process_count)
        ]
    )


def packing_efficiency(batch: Batch) -> float:
    """Fraction of frames of a batch that belong to an example."""
    return float(np.mean(batch.segment_ids != 0))
