"""The private APIs of Grain and Orbax this library uses, behind version checks.

Two hot paths reach into library internals:

- the input pipeline's first-fit packer (:mod:`bagpiper_jax.data.packing`) subclasses
  Grain's private ``FirstFitPackedBatch`` to drop its per-element pytree walks (the same
  bins and output, a fraction of the time) and installs it on the public
  ``FirstFitPackIterDataset``;
- :mod:`bagpiper_jax.checkpoint.lazy_save` writes params chunk by chunk through Orbax's
  TensorStore spec builder and metadata writers (bounded memory for 8B conversions).

Each is used only when the installed release is of a series this code was tested with
(:data:`TESTED`) and its internals import; otherwise the public path runs — Grain's own
packer, and Orbax's ``StandardSave`` of whole params — after one warning, with the same
results (tests check both paths). ``BAGPIPER_COMPAT=public`` forces the public paths.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import types

log = logging.getLogger(__name__)

# Release series (major.minor) whose internals match the code here.
TESTED = {"grain": "0.2", "orbax-checkpoint": "0.12"}


def _series(dist: str) -> str | None:
    try:
        return ".".join(importlib.metadata.version(dist).split(".")[:2])
    except importlib.metadata.PackageNotFoundError:
        return None


def _internals_allowed(dist: str) -> bool:
    if os.environ.get("BAGPIPER_COMPAT") == "public":
        return False
    if _series(dist) != TESTED[dist]:
        log.warning(
            "%s %s is not of the tested %s.x series: using its public API (slower)", dist, _series(dist), TESTED[dist]
        )
        return False
    return True


# --- Grain: the first-fit packer -----------------------------------------------------------


class _NoPacker:
    """Stand-in base class when Grain's packer internals are not used (never instantiated)."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError("Grain's packer internals are not available")


GrainPackerBase: type = _NoPacker
grain_key_name = None
if _internals_allowed("grain"):
    try:
        from grain._src.python.dataset.transformations import packing_packed_batch  # private: guarded here

        GrainPackerBase, grain_key_name = packing_packed_batch.FirstFitPackedBatch, packing_packed_batch.get_key_name
    except (ImportError, AttributeError) as e:
        log.warning("Grain's packer internals did not import (%s): using its public packer", e)
GRAIN_PACKER = grain_key_name is not None


def install_packer(dataset, packer_cls) -> bool:
    """Makes a ``grain.experimental.FirstFitPackIterDataset`` pack with ``packer_cls`` (a
    subclass of :data:`GrainPackerBase`); False (dataset unchanged) where that is not possible."""
    if not GRAIN_PACKER or not hasattr(dataset, "_packer_cls"):
        return False
    dataset._packer_cls = packer_cls
    return True


# --- Orbax: chunked array writes ------------------------------------------------------------

ORBAX_WRITER: types.SimpleNamespace | None = None  # the internals lazy_save uses, where allowed
if _internals_allowed("orbax-checkpoint"):
    try:
        from orbax.checkpoint._src.metadata import array_metadata_store  # private: guarded here
        from orbax.checkpoint._src.multihost import multihost
        from orbax.checkpoint._src.serialization import (
            jax_array_handlers,
            ocdbt_utils,
            tensorstore_utils,
            type_handler_registry,
        )

        ORBAX_WRITER = types.SimpleNamespace(
            array_metadata_store=array_metadata_store.Store,
            process_index=multihost.process_index,
            serialize_shardings=jax_array_handlers._async_serialize_shardings,
            subdir_process_index=ocdbt_utils.get_process_index_for_subdir,
            build_array_write_spec=tensorstore_utils.build_array_write_spec,
            create_registry=type_handler_registry.create_type_handler_registry,
            default_handlers=type_handler_registry._DEFAULT_TYPE_HANDLERS,
        )
    except (ImportError, AttributeError) as e:
        log.warning("Orbax internals did not import (%s): params are saved whole", e)
