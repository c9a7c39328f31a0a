"""Decode speed of HF transformers ``generate`` on the Bagpiper backbone's shape, the torch
anchor of ``bench/generate.py``: frames/s per batch size; one JSON line.

A random-init ``Qwen3ForCausalLM`` with the config's backbone and the whole unified
vocabulary (the options of bench/generate.py), SDPA attention and HF's
dynamic KV cache, in ``--dtype`` on ``--device``. The prompts are stream 0 of
bench/generate.py's (same length and tokens); each row then gets exactly ``--frames + 1``
new tokens (``min_new_tokens = max_new_tokens``), sampled with the audio recipe (T 0.8,
top-k 20). Guidance is batched as ours is: an unconditional row per prompt doubles the
model batch, and the logits of each pair are mixed at scale 3 before sampling (HF's own
``guidance_scale`` would run the unconditional rows as a second, unbatched forward). The
single-stream model has one head over the vocabulary where ours has one per stream, so
this is the reference stack's decode loop, not the same arithmetic. frames/s counts the
new tokens of the conditional rows over the whole call (prefill included), like ours.

    python bench/hf_generate.py                                             # tiny, CPU
    python bench/hf_generate.py --config configs/8b.yaml --layers 8 --device cuda
"""

import functools
import json
import time

import torch
from synthetic import decode_config, decode_parser, synthetic_prompt_ids
from transformers import LogitsProcessor, LogitsProcessorList, Qwen3Config, Qwen3ForCausalLM

from bagpiper_jax.checkpoint.hf_qwen3 import hf_config_dict
from bagpiper_jax.vocab import Vocab


class PairedGuidance(LogitsProcessor):
    """Classifier-free guidance over a batch of ``[conditional rows; unconditional rows]``:
    both halves get ``scale * cond + (1 - scale) * uncond``."""

    def __init__(self, scale: float):
        self.scale = scale

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        cond, uncond = scores.chunk(2)
        mixed = self.scale * cond + (1 - self.scale) * uncond
        return torch.cat([mixed, mixed])


def generate(model, prompt: torch.Tensor, new_tokens: int, settings, processors) -> torch.Tensor:
    """``[rows, prompt + new_tokens]`` ids from ``prompt [rows, prompt]``, sampled per the
    audio decoding ``settings``; returns once the device is done."""
    with torch.no_grad():
        out = model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            do_sample=True,
            temperature=settings.temperature,
            top_k=settings.top_k,
            top_p=1.0,
            min_new_tokens=new_tokens,
            max_new_tokens=new_tokens,
            logits_processor=processors,
            pad_token_id=0,
        )
    if prompt.is_cuda:
        torch.cuda.synchronize()
    return out


def main(argv=None):
    p = decode_parser(__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    args = p.parse_args(argv)
    cfg = decode_config(args)
    vocab = Vocab.from_config(cfg.model)
    settings = cfg.generate.audio
    new_tokens = args.frames + 1
    guidance = not args.no_guidance and settings.guidance_scale > 1
    config = Qwen3Config(**{**hf_config_dict(cfg.model, args.dtype), "vocab_size": vocab.size})
    torch.manual_seed(cfg.seed)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, args.dtype))
    with torch.device(args.device):  # initialised in place: an 8B-width model is slow to move
        model = Qwen3ForCausalLM(config).eval()
    torch.set_default_dtype(default_dtype)
    processors = LogitsProcessorList([PairedGuidance(settings.guidance_scale)] * guidance)
    results = []
    for batch in (int(b) for b in args.batch.split(",")):
        prompt = torch.from_numpy(synthetic_prompt_ids(vocab, batch, args.prompt, cfg.seed)[..., 0]).long()
        if guidance:  # the unconditional rows hold pad (0) in place of the prompt
            prompt = torch.cat([prompt, torch.zeros_like(prompt)])
        prompt = prompt.to(args.device)
        run = functools.partial(generate, model, prompt, new_tokens, settings, processors)
        t0 = time.perf_counter()
        out = run()  # warm-up (allocator, kernels)
        warmup_s = time.perf_counter() - t0
        if out.shape[1] != prompt.shape[1] + new_tokens:
            raise RuntimeError(f"generated {out.shape[1] - prompt.shape[1]} tokens, expected {new_tokens}")
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        best = min(times)
        results.append(
            {
                "batch": batch,
                "frames_per_s": round(batch * new_tokens / best, 1),
                "step_ms": round(1e3 * best / new_tokens, 3),
                "decode_s": round(best, 3),
                "warmup_s": round(warmup_s, 1),
            }
        )
    print(
        json.dumps(
            {
                "what": "hf_transformers_generate",
                "config": args.config,
                "layers": cfg.model.layers,
                "hidden": cfg.model.hidden,
                "vocab": vocab.size,
                "dtype": args.dtype,
                "device": torch.cuda.get_device_name() if args.device == "cuda" else args.device,
                "torch": torch.__version__,
                "cfg": guidance,
                "prompt_frames": args.prompt + 5,
                "answer_frames": new_tokens,
                "results": results,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
