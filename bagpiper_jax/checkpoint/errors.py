"""The error of the checkpoint layer."""

from bagpiper_jax.errors import BagpiperError


class CheckpointError(BagpiperError):
    """A checkpoint, params directory or weights file is missing or malformed, or does not
    fit the configured model; the message names the file, key or field."""
