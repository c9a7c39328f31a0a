"""Continuous audio input: Whisper-style log-mel features and the Qwen3-Omni audio tower.

    features, frames = log_mel(waveforms, samples)          # [B, S] -> [B, S // 160, 128]
    tower = load_tower(params_dir, dtype=jnp.bfloat16)      # bagpiper-convert hf-audio-encoder
    outputs, tokens = encode(tower, features, frames)       # [B, 13 * ceil(T / 100), 2048]
"""
from bagpiper_jax.audio_encoder.checkpoint import load_tower, save_tower
from bagpiper_jax.audio_encoder.config import AudioEncoderConfig, output_lengths
from bagpiper_jax.audio_encoder.features import log_mel
from bagpiper_jax.audio_encoder.tower import AudioTower, encode, tower_from_params

__all__ = ["AudioEncoderConfig", "AudioTower", "encode", "load_tower", "log_mel", "output_lengths",
           "save_tower", "tower_from_params"]
