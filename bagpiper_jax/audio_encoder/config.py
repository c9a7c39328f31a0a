"""Configuration of the Qwen3-Omni audio tower, mirroring HF ``Qwen3OmniMoeAudioEncoderConfig``.

Only the fields that change the computation are kept; defaults are the shipped
Qwen3-Omni-30B-A3B tower (DESIGN §4) except ``output_dim``, which HF defaults to 3584 and
the shipped checkpoint sets to 2048.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from bagpiper_jax.config import ConfigError

# Frames per conv chunk is 2 * n_window; HF's length formula hard-codes 13 tokens per
# full chunk, which is the conv output length of a 100-frame chunk only.
SUPPORTED_N_WINDOW = 50
HF_MODEL_TYPE = "qwen3_omni_moe_audio_encoder"


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
        for name in ("num_mel_bins", "d_model", "encoder_layers", "encoder_attention_heads",
                     "encoder_ffn_dim", "downsample_hidden_size", "output_dim"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"audio_encoder.{name} must be positive, got {getattr(self, name)}")
        if self.d_model % self.encoder_attention_heads:
            raise ConfigError(f"audio_encoder.d_model ({self.d_model}) must be a multiple of "
                              f"encoder_attention_heads ({self.encoder_attention_heads})")
        if self.n_window != SUPPORTED_N_WINDOW:
            raise ConfigError(f"audio_encoder.n_window must be {SUPPORTED_N_WINDOW} (the HF length formula "
                              f"assumes 100-frame chunks), got {self.n_window}")
        if self.n_window_infer < self.chunk_frames:
            raise ConfigError(f"audio_encoder.n_window_infer ({self.n_window_infer}) must be at least one "
                              f"chunk ({self.chunk_frames} frames)")
        if self.activation_function != "gelu":
            raise ConfigError(f"audio_encoder.activation_function must be 'gelu' (exact erf), "
                              f"got {self.activation_function!r}")

    @property
    def chunk_frames(self) -> int:
        """Mel frames per conv chunk (100)."""
        return 2 * self.n_window

    @property
    def tokens_per_chunk(self) -> int:
        """Tokens out of one full chunk after three stride-2 convs (13)."""
        return conv_out_length(self.chunk_frames)

    @property
    def window_tokens(self) -> int:
        """Attention window in tokens: 13 × (n_window_infer // 100), i.e. 104 at full size."""
        return self.tokens_per_chunk * (self.n_window_infer // self.chunk_frames)

    @property
    def window_frames(self) -> int:
        """Mel frames per attention window (800 at full size); the tower is separable at
        these boundaries (see ``tower.py``)."""
        return self.chunk_frames * (self.n_window_infer // self.chunk_frames)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.encoder_attention_heads

    @property
    def conv_freq_bins(self) -> int:
        """Mel axis length after the three stride-2 convs (16 for 128 bins)."""
        return conv_out_length(self.num_mel_bins)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_hf_dict(self) -> dict:
        """A config.json body that ``Qwen3OmniMoeAudioEncoder.from_pretrained`` accepts."""
        return {"model_type": HF_MODEL_TYPE, "architectures": ["Qwen3OmniMoeAudioEncoder"], **self.to_dict()}

    @classmethod
    def from_dict(cls, values: dict, source: str = "config") -> "AudioEncoderConfig":
        """Builds from a dict holding (at least) these fields; unknown keys are ignored,
        as HF configs carry many fields (dropout, init range) that do not matter here."""
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in values.items() if k in fields}
        try:
            return cls(**kwargs)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from e

    @classmethod
    def from_hf_config(cls, path: str | Path) -> "AudioEncoderConfig":
        """Reads an HF config.json (or the directory holding it): either a bare audio
        encoder config or a full Qwen3-Omni config with ``thinker_config.audio_config``."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise ConfigError(f"{path} missing: not a HuggingFace model directory")
        try:
            values = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON: {e}") from e
        if values.get("model_type") == HF_MODEL_TYPE:
            return cls.from_dict(values, str(path))
        audio = values.get("thinker_config", {}).get("audio_config")
        if audio is None:
            raise ConfigError(f"{path}: neither a '{HF_MODEL_TYPE}' config nor one with "
                              f"'thinker_config.audio_config' (model_type={values.get('model_type')!r})")
        return cls.from_dict(audio, f"{path} thinker_config.audio_config")


def conv_out_length(frames):
    """Length after three Conv(k=3, stride 2, pad 1): ceil(ceil(ceil(n/2)/2)/2).

    Works on Python ints and integer arrays alike.
    """
    for _ in range(3):
        frames = (frames + 1) // 2
    return frames


def output_lengths(frames, config: AudioEncoderConfig = AudioEncoderConfig()):
    """Tokens the tower emits for ``frames`` mel frames (DESIGN §4): 13 per full chunk plus
    the conv length of the remainder. Ints or integer arrays."""
    full, rest = frames // config.chunk_frames, frames % config.chunk_frames
    return full * config.tokens_per_chunk + conv_out_length(rest)
