"""What a prepared directory was made from, and the checks that hold it to that.

``bagpiper-prepare`` binds its output directory to its inputs before writing a shard:
``OUT/preparation.json`` records

- ``records``: everything that changes a prepared record — the vocabulary layout, the
  tokenizer (a digest of its file), the codec (a digest of its params: their checksums),
  the audio tower's config (it sets how many frames user audio takes),
  ``data.max_audio_seconds``, ``data.row_frames`` and ``data.piece_frames``. The config
  hash is the hash of these, and ``index.json`` repeats them;
- ``manifest``: every part's path, size and modification time;
- ``layout``: ``data.examples_per_shard`` and ``data.manifest_chunk_bytes``, which fix the
  work units and shard names.

A re-run into the same directory continues only when all three match; otherwise it is
refused with the differences named (``--overwrite`` starts the directory afresh). The
trainer checks every source it reads against the run's config
(:func:`check_sources`): a different vocabulary, tokenizer, codec, tower or
``data.piece_frames`` is refused, naming the field; rows longer than the data was
prepared for only warn (examples longer than the old rows were skipped then).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from etils import epath

from bagpiper_jax.config import Config, DataConfig
from bagpiper_jax.data.manifest import ManifestPart
from bagpiper_jax.data.shards import DataError, PreparedIndex, read_index, temporary_path
from bagpiper_jax.vocab import Vocab

log = logging.getLogger(__name__)
BINDING = "preparation.json"
MUST_MATCH = (
    "model.num_special",
    "model.text_vocab_size",
    "model.num_streams",
    "model.codebook_size",
    "assets.tokenizer",
    "assets.codec",
    "assets.audio_encoder",
    "data.piece_frames",
)


class PreparationMismatch(DataError):
    """A prepared directory was made from other inputs than the ones given now."""


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()[:16]


def _file_digest(path: Path) -> str:
    return _digest(path.read_bytes())


def asset_digest(path: str, kind: str) -> str:
    """A digest of an asset's content ("" when unset): the tokenizer file; a params
    directory's ``config.json`` with its params' checksums (or, without them, their sizes)."""
    if not path:
        return ""
    root = Path(path)
    if not root.exists():
        raise DataError(f"assets.{kind}={path!r} does not exist")
    if kind == "tokenizer":
        return _file_digest(root / "tokenizer.json" if root.is_dir() else root)
    sealed = root / "params" / "checksums.json"
    if sealed.is_file():
        return _digest((root / "config.json").read_bytes() + sealed.read_bytes())
    sizes = sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*") if p.is_file())
    return _digest(json.dumps(sizes).encode())


def vocab_fields(vocab: Vocab) -> dict:
    return {
        "model.num_special": vocab.num_special,
        "model.text_vocab_size": vocab.text_size,
        "model.num_streams": vocab.num_streams,
        "model.codebook_size": vocab.codebook_size,
    }


def records_config(cfg: Config) -> dict:
    """The settings that change prepared records (dotted config keys; assets as digests)."""
    return {
        **vocab_fields(Vocab.from_config(cfg.model)),
        "assets.tokenizer": asset_digest(cfg.assets.tokenizer, "tokenizer"),
        "assets.codec": asset_digest(cfg.assets.codec, "codec"),
        "assets.audio_encoder": asset_digest(cfg.assets.audio_encoder, "audio_encoder"),
        "data.max_audio_seconds": cfg.data.max_audio_seconds,
        "data.row_frames": cfg.data.row_frames,
        "data.piece_frames": cfg.data.piece_frames,
    }


def config_hash(records: dict) -> str:
    """The hash of :func:`records_config` (stored in ``index.json``)."""
    return hashlib.sha256(json.dumps(records, sort_keys=True).encode()).hexdigest()[:16]


def binding(cfg: Config, parts: list[ManifestPart]) -> dict:
    """The body of ``preparation.json`` for preparing ``parts`` with ``cfg``."""
    manifest = []
    for part in parts:
        try:
            mtime = int(epath.Path(part.path).stat().mtime)
        except OSError:
            mtime = None
        path = part.path if "://" in part.path else str(Path(part.path).absolute())
        manifest.append({"path": path, "size": part.size, "mtime": mtime})
    records = records_config(cfg)
    return {
        "config_hash": config_hash(records),
        "records": records,
        "manifest": manifest,
        "layout": {
            "data.examples_per_shard": cfg.data.examples_per_shard,
            "data.manifest_chunk_bytes": cfg.data.manifest_chunk_bytes,
        },
    }


def _differences(old: dict, new: dict) -> list[str]:
    out = []
    for section in ("records", "layout"):
        for key in sorted(set(old.get(section, {})) | set(new[section])):
            a, b = old.get(section, {}).get(key), new[section].get(key)
            if a != b:
                out.append(f"{key} {a!r} -> {b!r}")
    parts = {p["path"]: p for p in old.get("manifest", [])}
    for part in new["manifest"]:
        before = parts.pop(part["path"], None)
        if before is None:
            out.append(f"manifest part {part['path']} is new")
        elif before != part:
            out.append(
                f"manifest part {part['path']} changed (size {before['size']} -> {part['size']}, "
                f"modified {before['mtime']} -> {part['mtime']})"
            )
    out += [f"manifest part {path} is gone" for path in parts]
    return out


def read_binding(out_dir: Path) -> dict | None:
    path = out_dir / BINDING
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is unreadable ({e}): prepare with --overwrite to start {out_dir} afresh") from e


def write_binding(out_dir: Path, body: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(out_dir / BINDING)
    tmp.write_text(json.dumps(body, indent=1))
    tmp.replace(out_dir / BINDING)


def check_rerun(out_dir: Path, new: dict) -> None:
    """Refuses to prepare into ``out_dir`` with inputs other than those it was bound to
    (or into a directory holding a preparation that is not bound), naming the differences."""
    old = read_binding(out_dir)
    if old is None:
        if ((out_dir / "units").is_dir() and any((out_dir / "units").iterdir())) or (out_dir / "index.json").exists():
            raise PreparationMismatch(
                f"{out_dir} holds a preparation without {BINDING} (made by an older version): "
                f"its inputs are unknown; prepare with --overwrite to start it afresh, or use another --out"
            )
        return
    wrong = _differences(old, new)
    if wrong:
        raise PreparationMismatch(
            f"{out_dir} was prepared from other inputs: {'; '.join(wrong)}; "
            f"prepare with --overwrite to start it afresh, or use another --out"
        )


def check_prepared(index: PreparedIndex, expected: dict, what: str) -> None:
    """Refuses ``index`` when a field of :data:`MUST_MATCH` present in ``expected`` (and
    recorded in the index) differs; ``what`` names where ``expected`` comes from."""
    stored = index.prepared_with
    if not stored:
        log.info("%s records no preparation inputs (prepared by an older version): not checked", index.directory)
        return
    wrong = [
        f"{key}={stored[key]!r} there, {expected[key]!r} in {what}"
        for key in MUST_MATCH
        if expected.get(key) and stored.get(key) and stored[key] != expected[key]
    ]
    if wrong:
        raise PreparationMismatch(
            f"{index.directory} was prepared for another model or assets: {'; '.join(wrong)}: "
            f"prepare it again with this config"
        )


def check_sources(cfg: Config) -> None:
    """Checks every prepared directory the run reads (sources and eval sets) against the
    run's config: :data:`MUST_MATCH` fields refuse, longer rows warn."""
    expected = records_config_where_available(cfg)
    for source in cfg.data.mixture:
        for directory in dict.fromkeys(d for d in (source.prepared, source.eval_prepared) if d):
            index = read_index(directory)
            check_prepared(index, expected, "the run's config")
            _warn_longer_rows(index, cfg.data)


def records_config_where_available(cfg: Config) -> dict:
    """:func:`records_config` with the assets that are unset or absent on this machine left
    out (a trainer needs neither the tokenizer nor the codec)."""
    expected = vocab_fields(Vocab.from_config(cfg.model)) | {"data.piece_frames": cfg.data.piece_frames}
    for key, (path, kind) in {
        "assets.tokenizer": (cfg.assets.tokenizer, "tokenizer"),
        "assets.codec": (cfg.assets.codec, "codec"),
        "assets.audio_encoder": (cfg.assets.audio_encoder, "audio_encoder"),
    }.items():
        if path and Path(path).exists():
            expected[key] = asset_digest(path, kind)
    return expected


def _warn_longer_rows(index: PreparedIndex, cfg: DataConfig) -> None:
    prepared_rows = index.prepared_with.get("data.row_frames")
    if prepared_rows is not None and cfg.row_frames > prepared_rows:
        log.warning(
            "%s was prepared for rows of %d frames: examples longer than that were skipped then, "
            "so rows of data.row_frames=%d see none of them",
            index.directory,
            prepared_rows,
            cfg.row_frames,
        )
