"""The library version (stored in checkpoints)."""

__version__ = "0.1.0"
