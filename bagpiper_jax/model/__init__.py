"""The multi-stream Bagpiper transformer (Qwen3 backbone) in Flax NNX."""

from bagpiper_jax.model.bagpiper import Bagpiper
from bagpiper_jax.model.batch import Batch
from bagpiper_jax.model.create import abstract_model, init_model

__all__ = ["Bagpiper", "Batch", "abstract_model", "init_model"]
