"""Conversions between foreign weight layouts and bagpiper-jax checkpoints: the HF XCodec
and Qwen3-Omni audio tower mappings, the reference PyTorch layout of a whole Bagpiper
checkpoint, and the functions behind ``bagpiper-convert`` (:mod:`~.commands`)."""
