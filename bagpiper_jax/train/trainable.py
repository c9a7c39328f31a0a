"""Which params train: ``train.trainable`` patterns over the params' dotted paths.

A pattern is a shell glob (``fnmatch``, case-sensitive) over a param's dotted path, e.g.
``embed``, ``decoder.blocks.attn.q_proj``, ``final_norm.scale``; it selects a param when it
matches the whole path or one of its leading parts, so ``decoder`` selects every decoder
param and ``adaptor_*`` both adaptor params. Decoder params are stacked over layers, so a
pattern selects a kind of param in every layer at once. The default ``("*",)`` selects
everything; every pattern must select at least one param (a typo is an error).

The train step differentiates the loss with respect to the selected params only, so XLA
never computes the weight gradients of frozen ones (the backward pass still runs through
frozen layers where a trainable param lies below them); the optimizer is initialised on
the selected params, so frozen params have no Adam moments, no weight decay and no update,
and the gradient norm and clipping cover the trainable params only.

    trainable = TrainableParams.select(("embed", "lm_head"), abstract_params)
    train, frozen = trainable.split(params)   # two nnx.States
    params = trainable.merge(train, frozen)   # the full state again
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx

from bagpiper_jax.config import ConfigError

Path = tuple[str, ...]

# Stage 1 of the recipe (docs/training.md): the decoder layers are frozen; the extended
# embedding table, lm_head, stream embeddings, audio adaptor and final norm train.
STAGE1_PATTERNS = ("embed", "lm_head", "stream_emb", "adaptor_*", "final_norm")


def param_paths(params: nnx.State) -> list[Path]:
    """Every param's path (its keys, without the trailing ``value``), in state order."""
    return [tuple(str(k) for k in path) for path, _ in nnx.to_flat_state(params)]


def _matches(pattern: str, path: Path) -> bool:
    return any(fnmatch.fnmatchcase(".".join(path[:n]), pattern) for n in range(1, len(path) + 1))


@dataclasses.dataclass(frozen=True)
class TrainableParams:
    """The params that train (``paths``) and those that stay frozen."""

    paths: frozenset[Path]
    frozen_paths: frozenset[Path]

    @classmethod
    def select(cls, patterns: Sequence[str], params: nnx.State) -> TrainableParams:
        """The params of ``params`` (abstract or real) matched by any of ``patterns``."""
        paths = param_paths(params)
        unmatched = [p for p in patterns if not any(_matches(p, path) for path in paths)]
        if unmatched:
            known = ", ".join(".".join(p) for p in paths)
            raise ConfigError(f"train.trainable: {unmatched} match no parameter (parameters: {known})")
        chosen = frozenset(path for path in paths if any(_matches(p, path) for p in patterns))
        return cls(chosen, frozenset(paths) - chosen)

    @property
    def everything(self) -> bool:
        return not self.frozen_paths

    @property
    def frozen_names(self) -> frozenset[str]:
        """Dotted paths of the frozen params (``decoder.blocks.mlp.up``)."""
        return frozenset(".".join(p) for p in self.frozen_paths)

    def _is_trainable(self, path, _value) -> bool:
        return tuple(str(k) for k in path) in self.paths

    def split(self, params: nnx.State) -> tuple[nnx.State, nnx.State]:
        """``(trainable, frozen)`` sub-states of ``params`` (frozen is empty when all train)."""
        return nnx.split_state(params, self._is_trainable, ...)

    @staticmethod
    def merge(trainable: nnx.State, frozen: nnx.State) -> nnx.State:
        """The full state from :meth:`split`'s two parts."""
        return nnx.merge_state(trainable, frozen)

    def counts(self, params: nnx.State) -> dict[str, int]:
        """Trainable and frozen parameter counts (elements) of ``params``."""
        trainable, frozen = self.split(params)
        return {"trainable_params": tree_size(trainable), "frozen_params": tree_size(frozen)}


def trainable_or_all(trainable: TrainableParams | None, params: nnx.State) -> TrainableParams:
    """``trainable``, or (None) every param of ``params`` trainable."""
    return trainable if trainable is not None else TrainableParams.select(("*",), params)


def tree_size(tree) -> int:
    """Elements over all array leaves of ``tree`` (abstract or real)."""
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def tree_bytes(tree) -> int:
    """Bytes over all array leaves of ``tree`` (abstract or real), e.g. an optimizer state."""
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))
