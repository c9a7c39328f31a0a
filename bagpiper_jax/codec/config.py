"""XCodec configuration: the fields of HF ``XcodecConfig`` (and its HuBERT / DAC
sub-configs) that the Flax model needs (read from an HF ``config.json`` by
:mod:`bagpiper_jax.convert.hf_xcodec`).

The defaults are the shipped ``hf-audio/xcodec-hubert-general`` configuration: 16 kHz,
hop 320 (50 frames/s), 1024-entry codebooks, 8 quantizers at 4 kbps.
"""

from __future__ import annotations

import dataclasses
import math

from bagpiper_jax.config import ConfigError


@dataclasses.dataclass(frozen=True)
class HubertConfig:
    """The HuBERT semantic model (post-LN, GroupNorm feature encoder)."""

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    conv_dim: tuple[int, ...] = (512,) * 7
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    conv_bias: bool = False
    feat_proj_layer_norm: bool = True
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        if not len(self.conv_dim) == len(self.conv_kernel) == len(self.conv_stride):
            raise ConfigError(
                "semantic_model_config.conv_dim, conv_kernel and conv_stride must have "
                f"equal lengths, got {len(self.conv_dim)}, {len(self.conv_kernel)}, "
                f"{len(self.conv_stride)}"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"semantic_model_config.hidden_size ({self.hidden_size}) must be a multiple "
                f"of num_attention_heads ({self.num_attention_heads})"
            )
        if self.hidden_size % self.num_conv_pos_embedding_groups:
            raise ConfigError(
                f"semantic_model_config.hidden_size ({self.hidden_size}) must be a multiple "
                f"of num_conv_pos_embedding_groups ({self.num_conv_pos_embedding_groups})"
            )


@dataclasses.dataclass(frozen=True)
class DacConfig:
    """The DAC acoustic encoder / decoder (Snake activations, no final tanh in XCodec)."""

    encoder_hidden_size: int = 64
    downsampling_ratios: tuple[int, ...] = (8, 5, 4, 2)
    decoder_hidden_size: int = 1024
    upsampling_ratios: tuple[int, ...] = (8, 5, 4, 2)
    hidden_size: int = 256


@dataclasses.dataclass(frozen=True)
class XCodecConfig:
    """XCodec hyper-parameters (HF ``XcodecConfig`` field names); the defaults are the shipped
    ``hf-audio/xcodec-hubert-general``."""

    target_bandwidths: tuple[int | float, ...] = (0.5, 1, 1.5, 2, 4)  # numbers kept as given (HF types)
    sample_rate: int = 16_000
    kernel_size: int = 3
    channel_ratios: tuple[int | float, ...] = (1, 1)
    strides: tuple[int, ...] = (1, 1)
    block_dilations: tuple[int, ...] = (1, 1)
    unit_kernel_size: int = 3
    codebook_size: int = 1024
    semantic: HubertConfig = dataclasses.field(default_factory=HubertConfig)
    acoustic: DacConfig = dataclasses.field(default_factory=DacConfig)

    def __post_init__(self):
        if len(self.strides) != len(self.channel_ratios):
            raise ConfigError(
                f"strides ({len(self.strides)}) and channel_ratios ({len(self.channel_ratios)}) must have equal lengths"
            )
        if any(s != 1 for s in self.strides):
            raise ConfigError(
                f"strides must all be 1 (semantic and acoustic frames must align), got {list(self.strides)}"
            )
        if self.hop_length != math.prod(self.semantic.conv_stride):
            raise ConfigError(
                f"acoustic_model_config.downsampling_ratios give hop {self.hop_length} but "
                f"semantic_model_config.conv_stride gives {math.prod(self.semantic.conv_stride)}"
            )
        if not self.target_bandwidths:
            raise ConfigError("target_bandwidths must not be empty")

    @property
    def hop_length(self) -> int:
        return math.prod(self.acoustic.downsampling_ratios)

    @property
    def frame_rate(self) -> int:
        return math.ceil(self.sample_rate / self.hop_length)

    @property
    def codebook_dim(self) -> int:
        """Width of the fused latent and of every codebook entry."""
        return self.acoustic.hidden_size + self.semantic.hidden_size

    @property
    def num_quantizers(self) -> int:
        """Quantizers held by the model: those needed at the highest target bandwidth."""
        nbits = math.ceil(math.log2(self.codebook_size))
        return int(1000 * self.target_bandwidths[-1] // (self.frame_rate * nbits))

    def num_frames(self, samples):
        """Code frames of a clip of ``samples`` samples (ints or integer arrays), as HF
        ``XcodecModel.encode`` gives them: the HuBERT frame count of the clip zero-padded
        by half a hop on each side (no trimming to a multiple of the hop)."""
        length = samples + 2 * (self.hop_length // 2)
        for k, s in zip(self.semantic.conv_kernel, self.semantic.conv_stride):
            length = (length - k) // s + 1
        return length

    @property
    def min_samples(self) -> int:
        """Shortest clip that gives one frame."""
        return next(n for n in range(1, self.hop_length * 2) if self.num_frames(n) >= 1)

    def quantizers_for_bandwidth(self, bandwidth: float | None = None) -> int:
        """Number of codebooks used at ``bandwidth`` kbps, exactly as HF maps it
        (default config: 0.5→1, 1→2, 1.5→3, 2→4, 4→8); ``None`` = the highest."""
        if bandwidth is None:
            return self.num_quantizers
        if bandwidth not in self.target_bandwidths:
            raise ConfigError(
                f"bandwidth {bandwidth} kbps is not one of target_bandwidths {list(self.target_bandwidths)}"
            )
        per_quantizer = math.log2(self.codebook_size) * self.frame_rate / 1000
        return int(max(1, math.floor(bandwidth / per_quantizer))) if bandwidth > 0 else self.num_quantizers
