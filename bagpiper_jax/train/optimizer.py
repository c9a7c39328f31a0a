"""AdamW with linear warmup and cosine decay to a floor, after global-norm clipping (docs/training.md)."""

from __future__ import annotations

import optax

from bagpiper_jax.config import TrainConfig


def learning_rate(cfg: TrainConfig) -> optax.Schedule:
    """0 -> ``lr`` linearly over ``warmup_steps``, then cosine down to ``final_lr_ratio * lr``
    at ``decay_steps`` (constant after)."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=cfg.lr,
        warmup_steps=cfg.warmup_steps,
        decay_steps=cfg.decay_steps,
        end_value=cfg.lr * cfg.final_lr_ratio,
    )


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    return optax.chain(
        optax.clip_by_global_norm(cfg.clip_norm),
        optax.adamw(learning_rate(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay),
    )
