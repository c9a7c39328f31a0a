"""bagpiper-jax: the JAX/TPU library for Bagpiper (multi-stream audio foundation model).

Packages, from the bottom up (each imports only from the layers before it; see docs/):
``config``/``vocab``/``sharding`` -> ``model``, ``codec``, ``audio_encoder`` ->
``checkpoint`` -> ``data`` -> ``train``, ``generate`` -> ``convert`` -> ``cli``.
"""

from bagpiper_jax.config import Config, ConfigError, MeshConfig, ModelConfig, RuntimeConfig, load_config
from bagpiper_jax.version import __version__
from bagpiper_jax.vocab import Vocab

__all__ = ["Config", "ConfigError", "MeshConfig", "ModelConfig", "RuntimeConfig", "Vocab", "__version__", "load_config"]
