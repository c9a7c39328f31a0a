"""Shared helpers for the audio encoder tests: a tiny random HF tower and feature batches."""

from __future__ import annotations

import numpy as np

# Tiny tower: 100-frame chunks as at full size, attention windows of 26 tokens (2 chunks).
TINY = dict(
    d_model=32,
    encoder_layers=2,
    encoder_attention_heads=4,
    encoder_ffn_dim=64,
    downsample_hidden_size=8,
    output_dim=16,
    n_window_infer=200,
)


def tiny_hf_encoder(seed: int = 0):
    """A ``Qwen3OmniMoeAudioEncoder`` with every parameter randomised (HF init leaves biases
    zero and norms at one, which would hide layout mistakes)."""
    import torch
    from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import Qwen3OmniMoeAudioEncoderConfig
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeAudioEncoder

    torch.manual_seed(seed)
    model = Qwen3OmniMoeAudioEncoder(Qwen3OmniMoeAudioEncoderConfig(**TINY)).eval()
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


def hf_encode(model, clips: list[np.ndarray]) -> list[np.ndarray]:
    """HF tower on a batch of clips ``[frames, 128]`` (one HF call), split per clip."""
    import torch
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import _get_feat_extract_output_lengths

    lengths = torch.tensor([len(c) for c in clips])
    with torch.no_grad():
        out = model(torch.from_numpy(np.concatenate(clips).T.copy()), feature_lens=lengths).last_hidden_state
    sizes = _get_feat_extract_output_lengths(lengths).tolist()
    return [o.numpy() for o in out.split(sizes)]
