"""Exact parameter counts and model FLOPs per frame (for MFU)."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection

from bagpiper_jax.config import ModelConfig
from bagpiper_jax.vocab import Vocab


@dataclasses.dataclass(frozen=True)
class ParamCount:
    """Trainable parameters of the transformer by part (``total`` sums them)."""

    per_layer: int
    layers: int  # all decoder layers
    embed: int
    lm_head: int
    final_norm: int
    stream_emb: int
    adaptor: int

    @property
    def total(self) -> int:
        return self.layers + self.embed + self.lm_head + self.final_norm + self.stream_emb + self.adaptor


def param_count(cfg: ModelConfig) -> ParamCount:
    """Trainable parameters of the Bagpiper transformer (docs/model.md, Sizes)."""
    d, hd = cfg.hidden, cfg.head_dim
    attn = d * cfg.heads * hd * 2 + d * cfg.kv_heads * hd * 2
    per_layer = attn + 3 * d * cfg.mlp + 2 * d + 2 * hd
    v = Vocab.from_config(cfg).size
    return ParamCount(
        per_layer=per_layer,
        layers=cfg.layers * per_layer,
        embed=v * d,
        lm_head=d * v,
        final_norm=d,
        stream_emb=cfg.num_streams * d,
        adaptor=cfg.continuous_dim * d + d,
    )


def matmul_weights(cfg: ModelConfig) -> dict[str, int]:
    """Multiply-accumulates per frame of each matmul weight, by its dotted param path (the
    decoder's over all layers; ``lm_head``: stream 0 over the whole vocabulary and streams
    >= 1 over the audio range)."""
    v = Vocab.from_config(cfg)
    d, q, kv, n = cfg.hidden, cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim, cfg.layers
    attn, mlp = "decoder.blocks.attn.", "decoder.blocks.mlp."
    return {
        attn + "q_proj": n * d * q,
        attn + "k_proj": n * d * kv,
        attn + "v_proj": n * d * kv,
        attn + "o_proj": n * q * d,
        mlp + "gate": n * d * cfg.mlp,
        mlp + "up": n * d * cfg.mlp,
        mlp + "down": n * cfg.mlp * d,
        "lm_head": d * v.size + (cfg.num_streams - 1) * d * v.audio_size,
    }


def train_flops_per_frame(cfg: ModelConfig, seq_len: int, frozen: Collection[str] = ()) -> float:
    """Model FLOPs of one training step (forward + backward = 3x forward) per frame.

    Counts the matmuls of the layers, the stream-0 head over the whole vocabulary and the
    streams >= 1 heads over the audio range, and attention as ``12 · layers · heads ·
    head_dim · seq_len`` (scores and values, no causal halving — the convention of the
    anchors and of MaxText). Embedding gathers, norms and the adaptor (which only runs on
    continuous frames) are not counted.

    ``frozen``: dotted paths of params that get no gradient (``train.trainable``): their
    weight-gradient matmuls (a third of their FLOPs) do not run and are not counted. Their
    input gradients are, as the step computes them whenever a param below trains (the
    recipe's stage 1 trains the embedding table, below every layer).
    """
    weights = matmul_weights(cfg)
    dense = sum((4 if name in frozen else 6) * macs for name, macs in weights.items())
    attention = 12 * cfg.layers * cfg.heads * cfg.head_dim * seq_len
    return float(dense + attention)
