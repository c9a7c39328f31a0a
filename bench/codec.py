"""XCodec encode/decode throughput, ours (JAX, jitted, bucketed) vs HF torch, same process.

Default (shipped) config with random weights (codebooks randomised), 10 s clips at 16 kHz;
``--hf-config`` changes config fields (a tiny codec for a CPU rehearsal). Prints one JSON
line: seconds of audio per second for each side and the ratios (ours / HF; > 1 means
faster). Both sides run fp32 on the default JAX device / ``--torch-device`` (default: CUDA
when JAX runs on a GPU and torch has one, else CPU).

    python bench/codec.py [--batch 2] [--seconds 10] [--repeats 2] [--torch-device cuda]
"""

import argparse
import json
import time

import jax
import numpy as np
import torch
from hf_side import add_hf_arguments, torch_device
from transformers import XcodecConfig, XcodecModel

from bagpiper_jax.codec.params import model_from_params
from bagpiper_jax.codec.tokenizer import XCodecTokenizer
from bagpiper_jax.convert.hf_xcodec import config_from_hf, params_from_hf_state

p = argparse.ArgumentParser()
p.add_argument("--batch", type=int, default=2)
p.add_argument("--seconds", type=float, default=10.0)
p.add_argument("--repeats", type=int, default=2)
add_hf_arguments(p)
args = p.parse_args()

torch.manual_seed(0)
device = torch_device(args.torch_device)
hf = XcodecModel(XcodecConfig(**args.hf_config)).eval()
with torch.no_grad():
    for q in hf.quantizer.quantizers:
        q.codebook.embed.normal_()
cfg = config_from_hf(hf.config.to_dict())
ours = XCodecTokenizer(
    model_from_params(cfg, params_from_hf_state(cfg, {k: v.numpy() for k, v in hf.state_dict().items()})),
    batch_size=args.batch,
)
hf = hf.to(device)

samples = int(args.seconds * cfg.sample_rate)
clips = [(0.1 * np.random.default_rng(i).standard_normal(samples)).astype(np.float32) for i in range(args.batch)]
audio_s = args.batch * args.seconds


def best_times(*fns):
    """Min wall time of each function over ``--repeats`` rounds after a warm-up round
    (compile / allocator); rounds alternate between the functions so load changes on a
    shared machine hit both sides alike."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(args.repeats):
        for fn, t in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            t.append(time.perf_counter() - t0)
    return [min(t) for t in times]


def hf_encode():
    with torch.no_grad():
        out = hf.encode(torch.from_numpy(np.stack(clips))[:, None].to(device), return_dict=False)
    return out.cpu().numpy().transpose(0, 2, 1)


codes = ours.encode(clips)
hf_codes = hf_encode()
agree = float(np.mean([np.mean(c == h) for c, h in zip(codes, hf_codes)]))


def hf_decode():
    with torch.no_grad():
        return (
            hf.decode(torch.from_numpy(np.stack(codes)).permute(0, 2, 1).long().to(device), return_dict=False)
            .cpu()
            .numpy()
        )


t_ours_enc, t_hf_enc = best_times(lambda: ours.encode(clips), hf_encode)
t_ours_dec, t_hf_dec = best_times(lambda: ours.decode(codes), hf_decode)
print(
    json.dumps(
        {
            "bench": "codec",
            "device": str(jax.devices()[0].device_kind),
            "torch_device": device,
            "batch": args.batch,
            "clip_seconds": args.seconds,
            "hf_config": args.hf_config,
            "repeats": args.repeats,
            "encode_audio_s_per_s": {
                "jax": round(audio_s / t_ours_enc, 2),
                "hf_torch": round(audio_s / t_hf_enc, 2),
                "ratio": round(t_hf_enc / t_ours_enc, 3),
            },
            "decode_audio_s_per_s": {
                "jax": round(audio_s / t_ours_dec, 2),
                "hf_torch": round(audio_s / t_hf_dec, 2),
                "ratio": round(t_hf_dec / t_ours_dec, 3),
            },
            "code_agreement_with_hf": round(agree, 5),
        }
    )
)
