"""Continuous audio input: Whisper-style log-mel features, the Qwen3-Omni audio tower and
the frozen tower as a model input (mel pieces -> encoder features).

    features, frames = log_mel(waveforms, samples)          # [B, S] -> [B, S // 160, 128]
    tower = load_tower(params_dir, dtype=jnp.bfloat16)      # bagpiper_jax.checkpoint.frozen_modules
    outputs, tokens = encode(tower, features, frames)       # [B, 13 * ceil(T / 100), 2048]
"""

from bagpiper_jax.audio_encoder.config import AudioEncoderConfig, output_lengths
from bagpiper_jax.audio_encoder.features import log_mel
from bagpiper_jax.audio_encoder.frozen import FrozenTower
from bagpiper_jax.audio_encoder.pieces import Continuous, MelPieces
from bagpiper_jax.audio_encoder.tower import AudioTower, encode, tower_from_params

__all__ = [
    "AudioEncoderConfig",
    "AudioTower",
    "Continuous",
    "FrozenTower",
    "MelPieces",
    "encode",
    "log_mel",
    "output_lengths",
    "tower_from_params",
]
