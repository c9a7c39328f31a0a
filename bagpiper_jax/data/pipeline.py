"""The Grain training input: prepared shards -> packed, sharded global batches.

    per source: this input shard's shards -> shuffle (reseeded each epoch)
                -> decode + template + guidance dropout
    -> mix the sources by weight -> first-fit packing into rows of ``row_frames``
    -> batch -> (multiprocess) prefetch -> Batch

Input shard ``s`` of ``data.input_shards`` reads the shards ``j`` with ``j % input_shards
== s`` of every source (in index order; a source with fewer shards is spread by record,
see :func:`select_records`), opening only their metadata: start-up costs what a host
reads, not the corpus size. Every kept record of a source is read exactly once per
epoch of that source; each source repeats on its own, and sources are interleaved by
Grain's deterministic weighted mixing. Every stage is deterministic given
``data.shuffle_seed`` and Grain's iterator state, so ``get_state``/``set_state`` resume a
run exactly (also with worker processes; the mixture's state holds each source's
position by name). Examples longer than a row are skipped (or, with
``data.overlong=truncate``, text-only ones are cut to the row), and so are examples with
more continuous audio than a row holds and records dropped as repeated ids; all are
counted in :attr:`InputPipeline.report` from the metadata, before any record is read.

A packed batch is a :class:`~bagpiper_jax.model.batch.Batch` of numpy arrays (this input
shard's rows of ``row_frames`` frames) whose ``pieces`` hold up to ``max_pieces_per_row``
continuous-audio pieces in ``mel_frames_per_row`` log-mel frames per row and whose
``source`` says which source each frame came from. A row closes when its frames, pieces
or log-mel frames run out.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import resource

import grain
import jax
import numpy as np
from absl import flags
from array_record.python.array_record_module import ArrayRecordReader

from bagpiper_jax.audio_encoder.pieces import MelPieces
from bagpiper_jax.audio_io import AudioError
from bagpiper_jax.config import DataConfig, SourceConfig
from bagpiper_jax.data.packing import first_fit_pack
from bagpiper_jax.data.provenance import check_prepared, vocab_fields
from bagpiper_jax.data.records import RecordError, decode_record
from bagpiper_jax.data.shards import DataError, PreparedIndex, read_index
from bagpiper_jax.data.template import TemplateError, TokensFor, guidance_candidates, template
from bagpiper_jax.model.batch import Batch
from bagpiper_jax.vocab import Vocab

log = logging.getLogger(__name__)
FRAME_KEYS = ("ids", "loss_mask", "source")
PIECE_KEYS = ("mel_offset", "mel_lengths", "mel_clip_lengths", "mel_start")  # packed as one [pieces, 4] "pieces"


@dataclasses.dataclass
class SourceSlice:
    """The records of one source that one input shard reads (a Grain random-access source).

    Records are addressed by (file, record) over the shards this input shard reads; readers
    open lazily, one per file, and are not pickled (worker processes open their own). A
    file that holds fewer records than its index entry, or cannot be read, is a
    :class:`DataError` naming it.
    """

    files: list[str]
    counts: list[int]  # records each file holds, by the index
    file_index: np.ndarray  # int32 [records]: which file holds each kept record
    record_index: np.ndarray  # int32 [records]: the record's position in its file
    truncate: np.ndarray  # bool [records]: cut to the row length
    report: dict

    def __post_init__(self):
        self._readers: dict[int, ArrayRecordReader] = {}

    def __len__(self) -> int:
        return len(self.file_index)

    def _reader(self, f: int) -> ArrayRecordReader:
        if f not in self._readers:
            try:
                reader = ArrayRecordReader(self.files[f])
                found = reader.num_records()
            except (OSError, RuntimeError, ValueError) as e:
                raise DataError(f"shard {self.files[f]} cannot be opened: {e}") from e
            if found != self.counts[f]:
                raise DataError(
                    f"shard {self.files[f]} holds {found} records, its index lists {self.counts[f]}: the file is "
                    f"truncated or replaced; prepare it again (delete units/unit-<n>.json of shard-<n>-*, re-run "
                    f"bagpiper-prepare)"
                )
            self._readers[f] = reader
        return self._readers[f]

    def __getitem__(self, i: int) -> tuple[bytes, bool]:
        f, r = int(self.file_index[i]), int(self.record_index[i])
        try:
            return self._reader(f).read([r])[0], bool(self.truncate[i])
        except (OSError, RuntimeError) as e:
            raise DataError(f"shard {self.files[f]} record {r} cannot be read: {e}") from e

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_readers"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._readers = {}


def select_records(index: PreparedIndex, cfg: DataConfig, shard_index: int, shard_count: int) -> SourceSlice:
    """The kept records of input shard ``shard_index`` of ``shard_count``, from the shards'
    metadata alone; the report counts what the filters dropped.

    Input shard ``s`` reads the shards ``j`` with ``j % shard_count == s``. A corpus with
    fewer shards than input shards is spread by record instead: input shard ``s`` reads
    shard ``s % n`` (``n`` shards), every ``k``-th record from the ``s // n``-th on, where
    ``k`` input shards share that shard. Either way every record is read by exactly one
    input shard, and the assignment depends on ``shard_count`` only.
    """
    if index.piece_frames != cfg.piece_frames:
        raise DataError(
            f"{index.directory} was prepared with data.piece_frames={index.piece_frames}, the run uses "
            f"{cfg.piece_frames}: prepare it again"
        )
    shards = len(index.shards)
    if not shards:
        raise DataError(f"{index.directory} holds no records")
    counts = np.asarray([s.count for s in index.shards], np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    if shards >= shard_count:
        mine, first, step = np.arange(shard_index, shards, shard_count), 0, 1
    else:
        j = shard_index % shards
        mine, first, step = np.asarray([j]), shard_index // shards, len(range(j, shard_count, shards))
    file_index = np.concatenate([np.full(len(range(first, counts[j], step)), f, np.int32) for f, j in enumerate(mine)])
    record_index = np.concatenate([np.arange(first, counts[j], step, dtype=np.int32) for j in mine])
    meta = np.concatenate([index.meta(index.shards[j])[first::step] for j in mine])
    duplicates = index.duplicates()
    unique = ~np.isin(offsets[mine][file_index] + record_index, duplicates)
    fits = meta["frames"] <= cfg.row_frames
    truncate = ~fits & meta["text_only"].astype(bool) & (cfg.overlong == "truncate")
    audio_fits = (meta["pieces"] <= cfg.max_pieces_per_row) & (meta["mel_frames"] <= cfg.mel_frames_per_row)
    keep = np.flatnonzero(unique & (fits | truncate) & audio_fits)
    report = {
        "records": len(meta),
        "kept": len(keep),
        "duplicates": int(np.sum(~unique)),
        "skipped_overlong": int(np.sum(unique & ~fits & ~truncate)),
        "skipped_audio_budget": int(np.sum(unique & (fits | truncate) & ~audio_fits)),
        "truncated": int(np.sum(unique & truncate & audio_fits)),
    }
    files = [str(index.records_path(index.shards[j])) for j in mine]
    counts = [index.shards[j].count for j in mine]
    return SourceSlice(files, counts, file_index[keep], record_index[keep], truncate[keep], report)


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
    """Record bytes -> templated example dict of source ``source`` (None for a record that
    cannot be decoded or templated: skipped with a warning, never fatal)."""

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
    source: int = 0

    def __call__(self, item: tuple[bytes, bool], rng: np.random.Generator):
        data, truncate = item
        keep = None
        try:
            ex = decode_record(data)
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
        except (RecordError, TemplateError, AudioError) as e:
            log.warning("skipping record: %s", e)
            return None
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
            "source": np.full(len(out["ids"]), self.source, np.int32),
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
        "source": row["source"],
        "mel": row["mel"],
        "mel_offset": np.where(used, mel0[piece_seg] + pieces[:, 0], 0).astype(np.int32),
        "mel_lengths": np.where(used, pieces[:, 1], 0).astype(np.int32),
        "mel_clip_lengths": np.where(used, pieces[:, 2], 0).astype(np.int32),
        "mel_start": np.where(used, frame0[piece_seg] + pieces[:, 3], -1).astype(np.int32),
    }


def to_batch(rows: dict) -> Batch:
    """Batched :func:`finish_row` output -> :class:`Batch`."""
    return Batch(
        rows["ids"],
        rows["segment_ids"],
        rows["positions"],
        rows["loss_mask"],
        MelPieces(rows["mel"], rows["mel_offset"], rows["mel_lengths"], rows["mel_clip_lengths"], rows["mel_start"]),
        rows["source"],
    )


@dataclasses.dataclass
class InputPipeline:
    """One input shard's packed batches; ``report`` counts, per source, what its filters dropped."""

    dataset: grain.IterDataset
    report: dict

    def __iter__(self):
        return iter(self.dataset)


def _raise_file_limit() -> None:
    """A host reads many shard files at once (one lazily opened reader each): lift the soft
    limit on open files to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _source_dataset(
    source: SourceConfig,
    number: int,
    cfg: DataConfig,
    templater: Templater,
    shard_index: int,
    shard_count: int,
    epochs: int | None,
) -> tuple[grain.MapDataset, dict]:
    index = read_index(source.prepared)
    check_prepared(index, vocab_fields(templater.vocab), "the pipeline's vocabulary")
    records = select_records(index, cfg, shard_index, shard_count)
    if not len(records):
        raise DataError(
            f"input shard {shard_index} of {shard_count} has no records in {source.prepared} (source "
            f"{source.name!r}): prepare more shards or use fewer input shards"
        )
    for what, flag in (
        ("skipped_overlong", f"data.row_frames={cfg.row_frames}"),
        ("skipped_audio_budget", "data.max_pieces_per_row / data.mel_frames_per_row"),
    ):
        if records.report[what]:
            log.warning("source %s: skipping %d examples over %s (%s)", source.name, records.report[what], flag, what)
    # Seeds differ per source so two sources of the same size do not shuffle alike.
    ds = EpochShuffle(grain.MapDataset.source(records), cfg.shuffle_seed + 1000 * number).repeat(epochs)
    templater = dataclasses.replace(templater, source=number)
    return ds.random_map(templater, seed=cfg.shuffle_seed + 1 + 1000 * number).filter(
        lambda x: x is not None
    ), records.report


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
    """The pipeline of logical input shard ``shard_index`` of ``shard_count`` over the
    sources of ``cfg.mixture``; it yields ``batch_rows / shard_count`` rows per batch.

    Args:
      tokens_for: mel frames -> encoder tokens (the audio encoder's length formula).
      train: guidance dropout on (with ``cfg.guidance_drop``); off for evaluation.
      epochs: ``None`` repeats every source forever; with a number, the mixture stops when
        one source is exhausted.
    """
    if cfg.batch_rows % shard_count:
        raise DataError(f"data.batch_rows={cfg.batch_rows} does not divide over {shard_count} input shards")
    if not cfg.mixture:
        raise DataError("no data: set data.prepared (or data.sources)")
    _raise_file_limit()
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
    # Reading is cheap next to decode + template (CPU-bound Python): threads only fight over the GIL
    # (and Grain's prefetch scans its whole buffer per element), so local shards read inline.
    read = grain.ReadOptions(num_threads=cfg.read_threads, prefetch_buffer_size=16 * cfg.read_threads)
    datasets, report = {}, {}
    for number, source in enumerate(cfg.mixture):
        ds, report[source.name] = _source_dataset(source, number, cfg, templater, shard_index, shard_count, epochs)
        datasets[source.name] = ds.to_iter_dataset(read)
    mixed = (
        next(iter(datasets.values()))
        if len(datasets) == 1
        else grain.IterDataset.mix(datasets, {s.name: s.weight for s in cfg.mixture})
    )
    lengths = {
        **dict.fromkeys(FRAME_KEYS, cfg.row_frames),
        "pieces": cfg.max_pieces_per_row,
        "mel": cfg.mel_frames_per_row,
    }
    it = first_fit_pack(mixed, lengths, cfg.packing_bins, cfg.shuffle_seed + 2)
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
        self.report = {
            name: {k: sum(p.report[name][k] for p in pipelines) for k in pipelines[0].report[name]}
            for name in pipelines[0].report
        }  # per source, over this process's input shards
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
