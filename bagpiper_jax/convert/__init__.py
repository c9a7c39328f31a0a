"""Conversions between foreign weight layouts and bagpiper-jax checkpoints: the HF XCodec
and Qwen3-Omni audio tower mappings, the reference PyTorch layout of a whole Bagpiper
checkpoint (:mod:`~.torch_layout`), ESPnet's native files (:mod:`~.espnet`), the vLLM fork's
serving directory (:mod:`~.vllm`), the functions behind ``bagpiper-convert``
(:mod:`~.commands`) and the logit check against PyTorch (:mod:`~.logit_check`, needs torch)."""
