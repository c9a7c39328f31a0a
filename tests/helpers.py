"""Shared test fixtures: tiny configs, batches and a tiny HF Qwen3 checkpoint."""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np

from bagpiper_jax import load_config
from bagpiper_jax.audio_encoder.pieces import Continuous
from bagpiper_jax.model import Batch
from bagpiper_jax.vocab import ASSISTANT, AUDIO, BOS, EOS, TEXT, USER, Vocab

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"


def tiny_config(*overrides: str):
    return load_config(TINY, list(overrides))


def example_frames(vocab: Vocab, rng: np.random.Generator, n_text: int, n_codes: int, n_cont: int):
    """One user-audio / assistant-text+audio example: ids, loss mask, continuous frame indices.

    bos | user audio [n_cont continuous frames] eos | assistant text [n_text] eot |
    assistant audio [n_codes codec frames, delay-interleaved] eos
    """
    s = vocab.num_streams
    ids, mask, cont = [], [], []

    def frame(stream0, weight0=0.0):
        row = np.zeros(s, np.int32)
        row[0] = stream0
        ids.append(row)
        m = np.zeros(s, np.float32)
        m[0] = weight0
        mask.append(m)

    frame(BOS)
    frame(USER), frame(AUDIO)
    for _ in range(n_cont):
        cont.append(len(ids))
        frame(0)
    frame(EOS)
    frame(ASSISTANT, 1.0), frame(TEXT, 1.0)
    for t in rng.integers(0, vocab.text_size, n_text):
        frame(int(vocab.text_ids(t)), 1.0)
    frame(3, 1.0)  # <|eot|>
    frame(ASSISTANT, 1.0), frame(AUDIO, 1.0)
    codes = rng.integers(0, vocab.codebook_size, (n_codes, s))
    for t in range(n_codes + s - 1):
        row = np.array(
            [vocab.audio_ids(codes[t - n, n], n) if 0 <= t - n < n_codes else vocab.audio_pad(n) for n in range(s)],
            np.int32,
        )
        ids.append(row)
        mask.append(np.full(s, 0.125, np.float32))
    frame(EOS, 1.0)
    return np.stack(ids), np.stack(mask), np.array(cont, np.int32)


def packed_batch(
    vocab: Vocab, continuous_dim: int, rows: int = 2, frames: int = 96, seed: int = 0
) -> tuple[Batch, Continuous]:
    """Rows of two packed examples each plus padding, and continuous features for them."""
    rng = np.random.default_rng(seed)
    s = vocab.num_streams
    ids = np.zeros((rows, frames, s), np.int32)
    mask = np.zeros((rows, frames, s), np.float32)
    seg = np.zeros((rows, frames), np.int32)
    pos = np.zeros((rows, frames), np.int32)
    cont_frames = np.full((rows, 12), -1, np.int32)
    for r in range(rows):
        start, n_cont = 0, 0
        for segment in (1, 2):
            e_ids, e_mask, e_cont = example_frames(
                vocab, rng, n_text=5 + 3 * r, n_codes=6 + segment, n_cont=3 + segment
            )
            n = len(e_ids)
            ids[r, start : start + n], mask[r, start : start + n] = e_ids, e_mask
            seg[r, start : start + n], pos[r, start : start + n] = segment, np.arange(n)
            cont_frames[r, n_cont : n_cont + len(e_cont)] = e_cont + start
            start, n_cont = start + n, n_cont + len(e_cont)
        assert start < frames
    mask[0, 10, 0] = 1.0  # a trained stream-0 pad target: must be ignored
    features = rng.normal(size=(rows, 12, continuous_dim)).astype(np.float32)
    batch = Batch(
        ids=jnp.asarray(ids), segment_ids=jnp.asarray(seg), positions=jnp.asarray(pos), loss_mask=jnp.asarray(mask)
    )
    return batch, Continuous(jnp.asarray(features), jnp.asarray(cont_frames))


DEMO = REPO / "configs" / "demo.yaml"


def demo_overrides(root: Path) -> list[str]:
    """Overrides of configs/demo.yaml putting every path under ``root`` (a small demo there)."""
    return [
        f"data.prepared={root}/demo/prepared",
        f"data.eval_prepared={root}/demo/heldout",
        f"assets.tokenizer={root}/demo/tokenizer.json",
        f"assets.codec={root}/demo/codec",
        f"assets.audio_encoder={root}/demo/encoder",
        f"run_dir={root}/run",
        "data.row_frames=256",
        "runtime.max_frames=256",
        "data.examples_per_shard=16",
        "data.demo_examples=64",
        "data.demo_heldout=8",
    ]


def demo_config(root: Path, *overrides: str):
    return load_config(DEMO, [*demo_overrides(root), *overrides])
