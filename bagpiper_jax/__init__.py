"""bagpiper-jax: the JAX/TPU library for Bagpiper (multi-stream audio foundation model)."""
from bagpiper_jax.config import Config, ConfigError, MeshConfig, ModelConfig, load_config
from bagpiper_jax.vocab import Vocab

__version__ = "0.1.0"
__all__ = ["Config", "ConfigError", "MeshConfig", "ModelConfig", "Vocab", "load_config", "__version__"]
