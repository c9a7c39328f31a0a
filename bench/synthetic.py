"""Synthetic packed batches with the real structure, for benchmarks."""

from __future__ import annotations

import argparse

import numpy as np

from bagpiper_jax.audio_encoder.pieces import MelPieces
from bagpiper_jax.config import Config, load_config
from bagpiper_jax.model.batch import Batch
from bagpiper_jax.vocab import ASSISTANT, BOS, EOS, TEXT, USER, Vocab


def synthetic_prompt_ids(vocab: Vocab, rows: int, text_tokens: int, seed: int) -> np.ndarray:
    """``[rows, text_tokens + 5, streams]`` int32 user-text prompts: ``<|bos|> <|user|>
    <|text|>`` + random text tokens + ``<|eos|> <|assistant|>`` on stream 0, pad (0) on the
    other streams."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((rows, text_tokens + 5, vocab.num_streams), np.int32)
    ids[:, :3, 0] = (BOS, USER, TEXT)
    ids[:, 3 : 3 + text_tokens, 0] = vocab.text_ids(rng.integers(0, vocab.text_size, (rows, text_tokens)))
    ids[:, -2:, 0] = (EOS, ASSISTANT)
    return ids


def synthetic_batch(vocab: Vocab, rows: int, frames: int, seed: int, pieces: MelPieces | None = None) -> Batch:
    """Rows of two packed segments: text frames on stream 0, then audio frames on all
    streams, all from mixture source 0; ``pieces`` (e.g. zeros of the compiled shapes) ride
    along unchanged."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((rows, frames, vocab.num_streams), np.int32)
    mask = np.zeros(ids.shape, np.float32)
    half = frames // 2
    ids[:, :half, 0] = vocab.text_ids(rng.integers(0, vocab.text_size, (rows, half)))
    mask[:, :half, 0] = 1.0
    for s in range(vocab.num_streams):
        ids[:, half:, s] = vocab.audio_ids(rng.integers(0, vocab.codebook_size, (rows, frames - half)), s)
    mask[:, half:] = 1.0 / vocab.num_streams
    segment_ids = np.where(np.arange(frames) < half, 1, 2).astype(np.int32)[None].repeat(rows, 0)
    positions = np.concatenate([np.arange(half), np.arange(frames - half)]).astype(np.int32)[None].repeat(rows, 0)
    source = np.zeros(segment_ids.shape, np.int32)
    return Batch(ids=ids, segment_ids=segment_ids, positions=positions, loss_mask=mask, pieces=pieces, source=source)


def decode_parser(description: str) -> argparse.ArgumentParser:
    """The options of the decode benchmarks (bench/generate.py and its HF anchor
    bench/hf_generate.py), so that both run one shape."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", default="configs/tiny.yaml")
    p.add_argument("--layers", type=int, default=0, help="override model.layers")
    p.add_argument("--batch", default="1,16", help="comma-separated batch sizes (prompts)")
    p.add_argument("--prompt", type=int, default=64, help="text tokens per prompt")
    p.add_argument("--frames", type=int, default=128, help="interleaved audio frames per answer")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per batch size (best is reported)")
    p.add_argument("--no-guidance", action="store_true", help="no classifier-free guidance rows")
    p.add_argument("overrides", nargs="*", help="config overrides, key.path=value")
    return p


def decode_config(args: argparse.Namespace) -> Config:
    """The config of :func:`decode_parser` ``args`` (``--layers`` and the overrides applied)."""
    return load_config(args.config, [f"model.layers={args.layers}"] * bool(args.layers) + list(args.overrides))
