"""Continuous audio encoder throughput (log-mel features + audio tower), JAX vs HF torch.

Full Qwen3-Omni tower config (output_dim 2048; ``--hf-config`` changes config fields, e.g. a
tiny tower for a CPU rehearsal) with HF's random init, the same weights on both sides. A
batch of clips of different lengths (the longest ``--seconds``, the others shorter) goes
through waveform → log-mel → tower: ours as numpy log-mel per clip (as in the data
pipeline) then the jitted tower on the bucketed batch, HF as
``WhisperFeatureExtractor(feature_size=128)`` + the ``Qwen3OmniMoeAudioEncoder`` forward.
Prints one JSON line with mel frames per second for each side (best of ``--repeats`` after
a warm-up) and ours / HF (> 1: ours faster).
Both sides run on the default JAX device / ``--torch-device`` (default: CUDA when JAX runs
on a GPU and torch has one, else CPU), in ``--dtype``.

    python bench/audio_encoder.py [--batch 4] [--seconds 10] [--repeats 3] [--dtype float32]
                                  [--torch-device cuda]
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx
from hf_side import add_hf_arguments, torch_device
from transformers import WhisperFeatureExtractor
from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import Qwen3OmniMoeAudioEncoderConfig
from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeAudioEncoder

from bagpiper_jax.audio_encoder.config import AudioEncoderConfig
from bagpiper_jax.audio_encoder.features import HOP, log_mel
from bagpiper_jax.audio_encoder.tower import bucket_frames, parameter_count, tower_from_params
from bagpiper_jax.config import from_dict
from bagpiper_jax.convert.hf_audio_encoder import from_hf_tensors

p = argparse.ArgumentParser()
p.add_argument("--batch", type=int, default=4)
p.add_argument("--seconds", type=float, default=10.0)
p.add_argument("--repeats", type=int, default=3)
p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
add_hf_arguments(p)
args = p.parse_args()

torch.manual_seed(0)
device = torch_device(args.torch_device)
hf = Qwen3OmniMoeAudioEncoder(Qwen3OmniMoeAudioEncoderConfig(**{"output_dim": 2048, **args.hf_config})).eval()
config = from_dict(AudioEncoderConfig, hf.config.to_dict(), lenient=True)


def same_weights(model):
    state = model.state_dict()
    return from_hf_tensors(config, lambda name: state[name].numpy())


tower = tower_from_params(config, same_weights(hf), dtype=getattr(jnp, args.dtype))
hf = hf.to(device, getattr(torch, args.dtype))
extractor = WhisperFeatureExtractor(feature_size=128)

# Lengths from 1/2 to all of --seconds; the batch is padded to whole 100-frame chunks.
samples = [int(args.seconds * 16_000 * (1 - 0.5 * i / max(args.batch - 1, 1))) for i in range(args.batch)]
clips = [(0.1 * np.random.default_rng(i).standard_normal(n)).astype(np.float32) for i, n in enumerate(samples)]
frames = bucket_frames(max(samples) // HOP, step=config.chunk_frames)
lengths = np.array(samples, np.int32)
total_frames = int(sum(n // HOP for n in samples))


graphdef, params_state = nnx.split(tower)


@jax.jit
def tower_fn(params_state, features, frame_lengths):
    return nnx.merge(graphdef, params_state)(features, frame_lengths)


def ours():
    """Host log-mel per clip (numpy, as the data pipeline computes it), then the jitted tower."""
    features = np.zeros((args.batch, frames, 128), np.float32)
    for i, clip in enumerate(clips):
        features[i, : len(clip) // HOP] = log_mel(clip)
    outputs, _ = tower_fn(params_state, features, lengths // HOP)
    return outputs.block_until_ready()


def theirs():
    inputs = extractor(
        clips,
        sampling_rate=16_000,
        padding="longest",
        truncation=False,
        do_normalize=True,
        return_attention_mask=True,
        return_tensors="pt",
    )
    mask = inputs["attention_mask"].bool()
    features = inputs["input_features"].permute(0, 2, 1)[mask].T.to(device, getattr(torch, args.dtype))
    with torch.no_grad():
        out = hf(features, feature_lens=mask.sum(-1).to(device)).last_hidden_state
    return out.float().cpu().numpy()


def best_time(fn):
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


t0 = time.perf_counter()
ours()
compile_s = time.perf_counter() - t0
theirs()  # warm-up
t_ours, t_hf = best_time(ours), best_time(theirs)
print(
    json.dumps(
        {
            "bench": "audio_encoder",
            "device": str(jax.devices()[0].device_kind),
            "torch_device": device,
            "torch_threads": torch.get_num_threads(),
            "dtype": args.dtype,
            "params": parameter_count(config),
            "hf_config": args.hf_config,
            "batch": args.batch,
            "longest_seconds": args.seconds,
            "bucket_frames": frames,
            "mel_frames": total_frames,
            "repeats": args.repeats,
            "ours_compile_s": round(compile_s, 2),
            "ours_frames_per_s": round(total_frames / t_ours, 1),
            "hf_frames_per_s": round(total_frames / t_hf, 1),
            "speedup": round(t_hf / t_ours, 3),
        }
    )
)
