"""Shared helpers for the audio encoder tests: tiny random HF towers and feature batches.

Two window settings are tested (docs/audio_encoder.md): Qwen3-Omni's n_window 50 (100-frame
chunks of 13 tokens) and the reference vLLM fork's n_window 100 (200-frame chunks of 25
tokens), each with attention windows of two chunks in the tiny towers.

HF's ``_get_feat_extract_output_lengths`` counts 13 tokens per full chunk whatever the
chunk size, so for n_window 100 its tower keeps 13 of a chunk's 25 conv outputs and
misplaces the rest. The reference serves such towers with the vLLM fork, whose length
formula is the conv length of the configured chunk (``fork_output_lengths``); the HF tower
is run with that formula in place of its own (:func:`hf_encode`), which is then exactly the
fork's computation.
"""

from __future__ import annotations

import contextlib

import numpy as np

# Tiny towers: attention windows of 2 chunks (26 tokens for n_window 50, 50 for 100).
TINY = dict(
    d_model=32,
    encoder_layers=2,
    encoder_attention_heads=4,
    encoder_ffn_dim=64,
    downsample_hidden_size=8,
    output_dim=16,
    n_window_infer=200,
)
WINDOWS = {"n_window50": dict(n_window=50, n_window_infer=200), "n_window100": dict(n_window=100, n_window_infer=400)}


def tiny_hf_encoder(seed: int = 0, **overrides):
    """A ``Qwen3OmniMoeAudioEncoder`` with every parameter randomised (HF init leaves biases
    zero and norms at one, which would hide layout mistakes)."""
    import torch
    from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import Qwen3OmniMoeAudioEncoderConfig
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeAudioEncoder

    torch.manual_seed(seed)
    model = Qwen3OmniMoeAudioEncoder(Qwen3OmniMoeAudioEncoderConfig(**{**TINY, **overrides})).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            offset = 1.0 if "norm" in name and name.endswith("weight") else 0.0
            p.copy_(offset + torch.randn_like(p) * (0.3 if p.ndim > 1 else 0.5))
    return model


def random_features(lengths: list[int], frames: int | None = None, seed: int = 0) -> np.ndarray:
    """Right-padded float32 ``[batch, frames, 128]`` with N(0, 1) values in each clip's frames."""
    rng = np.random.default_rng(seed)
    features = np.zeros((len(lengths), frames or max(lengths), 128), np.float32)
    for i, n in enumerate(lengths):
        features[i, :n] = rng.standard_normal((n, 128))
    return features


def fork_output_lengths(input_lengths, n_window: int = 50):
    """Tokens per clip as the reference's vLLM fork counts them: the conv length (three
    stride-2 convs, ``(n - 1) // 2 + 1`` each) of every full ``2 * n_window``-frame chunk
    plus that of the remainder. Equals HF's formula for n_window 50 only."""

    def conv(n):
        for _ in range(3):
            n = (n - 1) // 2 + 1
        return n

    chunk = 2 * n_window
    return (input_lengths // chunk) * conv(chunk) + conv(input_lengths % chunk)


@contextlib.contextmanager
def fork_length_formula():
    """HF's tower module with :func:`fork_output_lengths` as its length formula."""
    from transformers.models.qwen3_omni_moe import modeling_qwen3_omni_moe

    original = modeling_qwen3_omni_moe._get_feat_extract_output_lengths
    modeling_qwen3_omni_moe._get_feat_extract_output_lengths = fork_output_lengths
    try:
        yield
    finally:
        modeling_qwen3_omni_moe._get_feat_extract_output_lengths = original


def hf_encode(model, clips: list[np.ndarray]) -> list[np.ndarray]:
    """HF tower on a batch of clips ``[frames, 128]`` (one HF call), split per clip: as
    shipped for n_window 50, with the fork's length formula otherwise."""
    import torch

    lengths = torch.tensor([len(c) for c in clips])
    formula = contextlib.nullcontext() if model.config.n_window == 50 else fork_length_formula()
    with torch.no_grad(), formula:
        out = model(torch.from_numpy(np.concatenate(clips).T.copy()), feature_lens=lengths).last_hidden_state
    sizes = fork_output_lengths(lengths, model.config.n_window).tolist()
    return [o.numpy() for o in out.split(sizes)]
