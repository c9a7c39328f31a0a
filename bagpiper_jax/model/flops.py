"""Exact parameter counts and model FLOPs per frame (for MFU)."""

from __future__ import annotations

import dataclasses

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


def train_flops_per_frame(cfg: ModelConfig, seq_len: int) -> float:
    """Model FLOPs of one training step (forward + backward = 3x forward) per frame.

    Counts the matmuls of the layers, the stream-0 head over the whole vocabulary and the
    streams >= 1 heads over the audio range, and attention as ``12 · layers · heads ·
    head_dim · seq_len`` (scores and values, no causal halving — the convention of the
    anchors and of MaxText). Embedding gathers, norms and the adaptor (which only runs on
    continuous frames) are not counted.
    """
    v = Vocab.from_config(cfg)
    d = cfg.hidden
    layer_matmul = d * (cfg.heads + 2 * cfg.kv_heads) * cfg.head_dim + cfg.heads * cfg.head_dim * d + 3 * d * cfg.mlp
    head = d * v.size + (cfg.num_streams - 1) * d * v.audio_size
    dense = 6 * (cfg.layers * layer_matmul + head)
    attention = 12 * cfg.layers * cfg.heads * cfg.head_dim * seq_len
    return float(dense + attention)
