"""Builds everything ``configs/demo.yaml`` trains on, from nothing, on CPU in about a minute.

Under the folder that holds ``data.prepared`` (``data/demo`` in the shipped config):
``corpus/`` (the synthetic clips and manifests of :mod:`bagpiper_jax.data.demo_corpus`),
the byte-level BPE tokenizer trained on its captions (``assets.tokenizer``), a tiny
random-weight XCodec (``assets.codec``) and audio tower (``assets.audio_encoder``) with the
real architectures, and the prepared shards of the training and held-out manifests
(``data.prepared``, ``data.eval_prepared``). A config asks for this with ``data.demo:
true``; real runs point these keys at Qwen3's tokenizer and the converted XCodec /
Qwen3-Omni weights instead.
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bagpiper_jax.audio_encoder.config import AudioEncoderConfig
from bagpiper_jax.audio_encoder.layers import INIT_STD
from bagpiper_jax.audio_encoder.tower import AudioTower
from bagpiper_jax.audio_io import load_audio
from bagpiper_jax.checkpoint.frozen_modules import save_codec, save_tower
from bagpiper_jax.codec.config import DacConfig, HubertConfig, XCodecConfig
from bagpiper_jax.codec.params import params_from_model
from bagpiper_jax.codec.xcodec import XCodec
from bagpiper_jax.config import Config
from bagpiper_jax.data.demo_corpus import captions, write_demo_corpus
from bagpiper_jax.data.prepare import prepare_manifest
from bagpiper_jax.data.shards import is_v1, migrate_v1
from bagpiper_jax.data.text_tokenizer import train_byte_bpe

log = logging.getLogger(__name__)
CODEC_CALIBRATION_CLIPS = 48


def tiny_codec_config():
    """XCodec with the real structure (hop 320, 8 quantizers) at toy width, 64-entry codebooks."""
    return XCodecConfig(
        target_bandwidths=(2.4,),
        codebook_size=64,
        semantic=HubertConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            conv_dim=(32,) * 7,
            num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=4,
        ),
        acoustic=DacConfig(encoder_hidden_size=8, decoder_hidden_size=32, hidden_size=16),
    )


def tiny_encoder_config(output_dim: int, window: int):
    """The Qwen3-Omni tower's structure at toy width."""
    return AudioEncoderConfig(
        d_model=32,
        encoder_layers=2,
        encoder_attention_heads=4,
        encoder_ffn_dim=64,
        downsample_hidden_size=8,
        output_dim=output_dim,
        n_window_infer=window,
    )


def write_random_codec(directory: str | Path, calibration: list[np.ndarray], seed: int = 0):
    """A random tiny XCodec whose codes follow the audio.

    Random codebooks sit far from the random encoder's latents, so every frame would map
    to the same entries. As XCodec's k-means codebook init does, each quantizer's entries
    are drawn from the residuals it sees on ``calibration`` clips (16 kHz float arrays).
    """
    cfg = tiny_codec_config()
    model = XCodec(cfg, rngs=nnx.Rngs(seed))
    lengths = np.asarray([len(w) for w in calibration], np.int32)
    batch = np.stack([np.pad(w, (0, lengths.max() - len(w))) for w in calibration]).astype(np.float32)
    graphdef, state = nnx.split(model)
    x, frames = jax.jit(lambda s, w, n: nnx.merge(graphdef, s).latents(w, n))(state, batch, lengths)
    residual = np.concatenate([np.asarray(x[i, :f]) for i, f in enumerate(np.asarray(frames))])
    rng = np.random.default_rng(seed)
    for q in model.quantizer.quantizers:
        entries = residual[rng.choice(len(residual), cfg.codebook_size, replace=len(residual) < cfg.codebook_size)]
        q.codebook.embed[...] = jnp.asarray(entries)
        residual = residual - entries[np.asarray(q.codebook.encode(jnp.asarray(residual)))]
    save_codec(directory, cfg, params_from_model(model))


def write_random_encoder(directory: str | Path, output_dim: int, window: int, seed: int = 0):
    """A random tiny audio tower whose features carry the clip.

    HF's init (std 0.02) shrinks the conv front end's output to ~1e-4, far below the
    tower's sinusoidal positions, and the output projections shrink it again: the features
    would hardly differ between clips and the demo model could not learn what it hears.
    The front end and the projections are rescaled to unit gain (std 1/sqrt(fan_in)).
    """
    tower = AudioTower(tiny_encoder_config(output_dim, window), rngs=nnx.Rngs(seed))
    for layer in (tower.conv2d1, tower.conv2d2, tower.conv2d3, tower.conv_out, tower.proj1, tower.proj2):
        fan_in = math.prod(layer.kernel.shape[:-1])
        layer.kernel[...] = layer.kernel[...] / (INIT_STD * math.sqrt(fan_in))
    save_tower(directory, tower)


def demo_clip(cfg: Config) -> str:
    """A held-out clip of the demo corpus (for example commands)."""
    return str(Path(cfg.data.prepared).parent / "corpus" / "wav" / "held00000.wav")


def _corpus_sizes(corpus: Path) -> tuple[int, int]:
    return tuple(len((corpus / name).read_text().splitlines()) for name in ("manifest.jsonl", "heldout.jsonl"))


def remove_other_build(cfg: Config, root: Path, examples: int, heldout: int) -> None:
    """Removes a demo built with other corpus sizes (e.g. by an earlier version): the corpus
    and everything made from it that lies under ``root``."""
    corpus = root / "corpus"
    if not (corpus / "heldout.jsonl").is_file() or _corpus_sizes(corpus) == (examples, heldout):
        return
    log.warning(
        "the demo corpus in %s has %d + %d examples, this version builds %d + %d: rebuilding it",
        corpus,
        *_corpus_sizes(corpus),
        examples,
        heldout,
    )
    a, d = cfg.assets, cfg.data
    for path in (corpus, d.prepared, d.eval_prepared, a.tokenizer, a.codec, a.audio_encoder):
        path = Path(path) if path else None
        if path is None or not path.exists() or not path.resolve().is_relative_to(root.resolve()):
            continue
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def ensure_demo_prepared(cfg: Config) -> None:
    """Builds whatever of the demo is missing (each part is skipped when present), with
    ``data.demo_examples`` training and ``data.demo_heldout`` held-out examples."""
    prepared = Path(cfg.data.prepared)
    root = prepared.parent
    corpus = root / "corpus"
    examples, heldout = cfg.data.demo_examples, cfg.data.demo_heldout
    remove_other_build(cfg, root, examples, heldout)
    if not (corpus / "heldout.jsonl").is_file():
        log.info("writing the demo corpus to %s", corpus)
        write_demo_corpus(corpus, examples=examples, heldout=heldout, seed=cfg.seed)
    assets = cfg.assets
    if not Path(assets.tokenizer).is_file():
        train_byte_bpe(captions(corpus / "manifest.jsonl"), min(512, cfg.model.text_vocab_size), assets.tokenizer)
    if not (Path(assets.codec) / "config.json").is_file():
        clips = sorted((corpus / "wav").glob("*.wav"))[:CODEC_CALIBRATION_CLIPS]
        write_random_codec(assets.codec, [load_audio(c) for c in clips], cfg.seed)
    if assets.audio_encoder and not (Path(assets.audio_encoder) / "config.json").is_file():
        write_random_encoder(assets.audio_encoder, cfg.model.continuous_dim, cfg.data.piece_frames, cfg.seed)
    for manifest, out in (("manifest.jsonl", cfg.data.prepared), ("heldout.jsonl", cfg.data.eval_prepared)):
        if out and (Path(out) / "index.json").is_file() and is_v1(out):  # a demo built by an older version
            migrate_v1(out, cfg.data.piece_frames)
        if out and not (Path(out) / "index.json").is_file():
            prepare_manifest(
                cfg,
                corpus / manifest,
                out,
                process_index=jax.process_index(),
                process_count=jax.process_count(),
                progress=False,
            )
