"""Configuration of the Qwen3-Omni audio tower, mirroring HF ``Qwen3OmniMoeAudioEncoderConfig``.

Only the fields that change the computation are kept; defaults are the shipped
Qwen3-Omni-30B-A3B tower (docs/audio_encoder.md) except ``output_dim``, which HF defaults to 3584 and
the shipped checkpoint sets to 2048.

``n_window`` sets the conv chunk (``2 * n_window`` mel frames) and ``n_window_infer`` the
attention window (whole chunks): Qwen3-Omni's tower uses 50 / 800 (100-frame chunks of 13
tokens, windows of 104 tokens), the reference's vLLM fork defaults to 100 / 400 (200-frame
chunks of 25 tokens, windows of 50 tokens). Token counts follow the conv length of the
configured chunk, as the vLLM fork computes them (HF's own length formula hard-codes 13
tokens per chunk, right for 50 only; docs/audio_encoder.md).
"""

from __future__ import annotations

import dataclasses

from bagpiper_jax.config import ConfigError


@dataclasses.dataclass(frozen=True)
class AudioEncoderConfig:
    """Audio tower hyper-parameters (field names as in the HF config)."""

    num_mel_bins: int = 128
    d_model: int = 1280
    encoder_layers: int = 32
    encoder_attention_heads: int = 20
    encoder_ffn_dim: int = 5120
    downsample_hidden_size: int = 480
    output_dim: int = 2048
    n_window: int = 50
    n_window_infer: int = 800
    activation_function: str = "gelu"

    def __post_init__(self):
        for name in (
            "num_mel_bins",
            "d_model",
            "encoder_layers",
            "encoder_attention_heads",
            "encoder_ffn_dim",
            "downsample_hidden_size",
            "output_dim",
            "n_window",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"audio_encoder.{name} must be positive, got {getattr(self, name)}")
        if self.d_model % self.encoder_attention_heads:
            raise ConfigError(
                f"audio_encoder.d_model ({self.d_model}) must be a multiple of "
                f"encoder_attention_heads ({self.encoder_attention_heads})"
            )
        if self.n_window_infer < self.chunk_frames:
            raise ConfigError(
                f"audio_encoder.n_window_infer ({self.n_window_infer}) must be at least one "
                f"chunk ({self.chunk_frames} frames)"
            )
        if self.activation_function != "gelu":
            raise ConfigError(
                f"audio_encoder.activation_function must be 'gelu' (exact erf), got {self.activation_function!r}"
            )

    @property
    def chunk_frames(self) -> int:
        """Mel frames per conv chunk (100 for n_window 50, 200 for 100)."""
        return 2 * self.n_window

    @property
    def tokens_per_chunk(self) -> int:
        """Tokens out of one full chunk after three stride-2 convs (13 for 100 frames, 25 for 200)."""
        return conv_out_length(self.chunk_frames)

    @property
    def window_tokens(self) -> int:
        """Attention window in tokens: tokens_per_chunk × (n_window_infer // chunk_frames), i.e.
        104 for 50 / 800 and 50 for 100 / 400."""
        return self.tokens_per_chunk * (self.n_window_infer // self.chunk_frames)

    @property
    def window_frames(self) -> int:
        """Mel frames per attention window (800 for 50 / 800, 400 for 100 / 400); the tower is
        separable at these boundaries (see ``tower.py``)."""
        return self.chunk_frames * (self.n_window_infer // self.chunk_frames)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.encoder_attention_heads

    def tokens(self, frames):
        """Tokens this tower emits for ``frames`` mel frames (:func:`output_lengths`); the
        data template's ``tokens_for``."""
        return output_lengths(frames, self)

    @property
    def conv_freq_bins(self) -> int:
        """Mel axis length after the three stride-2 convs (16 for 128 bins)."""
        return conv_out_length(self.num_mel_bins)


def conv_out_length(frames):
    """Length after three Conv(k=3, stride 2, pad 1): ceil(ceil(ceil(n/2)/2)/2).

    Works on Python ints and integer arrays alike.
    """
    for _ in range(3):
        frames = (frames + 1) // 2
    return frames


def output_lengths(frames, config: AudioEncoderConfig = AudioEncoderConfig()):
    """Tokens the tower emits for ``frames`` mel frames (docs/audio_encoder.md): ``tokens_per_chunk``
    per full chunk plus the conv length of the remainder. Ints or integer arrays."""
    full, rest = frames // config.chunk_frames, frames % config.chunk_frames
    return full * config.tokens_per_chunk + conv_out_length(rest)
