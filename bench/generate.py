"""Decode speed of the jitted KV-cache generation loop (``bagpiper_jax.generate.decode``):
frames/s per batch size; one JSON line.

Random-init params; synthetic prompts (``<|bos|> <|user|> <|text|>`` + text tokens +
``<|eos|> <|assistant|>``); the answer is forced to one audio segment cut at exactly
``--frames`` interleaved frames (``audio.min_step = audio.max_step``: no END token is
allowed before the cut), so every row decodes ``frames + 1`` frames with the
docs/generation.md sampling (T 0.8, top-k 20) and guidance (scale 3: the unconditional rows
double the model batch; ``--no-guidance`` drops them). frames/s counts answer frames of the
conditional rows over the whole call (prompt prefill included); compile time is reported
apart.

    python bench/generate.py                                              # tiny, CPU
    python bench/generate.py --config configs/8b.yaml --layers 4 --frames 256   # 8B width, GPU
"""

import argparse
import dataclasses
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from bagpiper_jax.config import load_config
from bagpiper_jax.generate.decode import Prompts, decode
from bagpiper_jax.generate.rules import DecodeRules, modality_plan
from bagpiper_jax.model.create import init_model
from bagpiper_jax.sharding import make_mesh
from bagpiper_jax.vocab import ASSISTANT, BOS, EOS, TEXT, USER, Vocab


def synthetic_prompts(vocab: Vocab, rows: int, text_tokens: int, seed: int) -> Prompts:
    rng = np.random.default_rng(seed)
    ids = np.zeros((rows, text_tokens + 5, vocab.num_streams), np.int32)
    ids[:, :3, 0] = (BOS, USER, TEXT)
    ids[:, 3 : 3 + text_tokens, 0] = vocab.text_ids(rng.integers(0, vocab.text_size, (rows, text_tokens)))
    ids[:, -2:, 0] = (EOS, ASSISTANT)
    return Prompts(jnp.asarray(ids), jnp.zeros((rows,), jnp.int32))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/tiny.yaml")
    p.add_argument("--layers", type=int, default=0, help="override model.layers")
    p.add_argument("--batch", default="1,16", help="comma-separated batch sizes (prompts)")
    p.add_argument("--prompt", type=int, default=64, help="text tokens per prompt")
    p.add_argument("--frames", type=int, default=128, help="interleaved audio frames per answer")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per batch size (best is reported)")
    p.add_argument("--no-guidance", action="store_true", help="no classifier-free guidance rows")
    p.add_argument("overrides", nargs="*", help="config overrides, key.path=value")
    args = p.parse_args(argv)
    overrides = [f"model.layers={args.layers}"] * bool(args.layers) + list(args.overrides)
    cfg = load_config(args.config, overrides)
    vocab = Vocab.from_config(cfg.model)
    audio = dataclasses.replace(cfg.generate.audio, min_step=args.frames, max_step=args.frames)
    rules = DecodeRules(vocab, dataclasses.replace(cfg.generate, audio=audio), modality_plan(("audio",)))
    prompt_frames = args.prompt + 5
    answer_frames = args.frames + 1  # modality, then the interleaved frames up to the cut
    slots = -(-(prompt_frames + answer_frames) // 64) * 64
    mesh = make_mesh(cfg.mesh)
    graphdef, params, _ = init_model(cfg.model, cfg.runtime, mesh, cfg.mesh.rules, cfg.seed)
    guidance = not args.no_guidance and audio.guidance_scale > 1
    results = []
    with jax.set_mesh(mesh):
        for batch in (int(b) for b in args.batch.split(",")):
            prompts = synthetic_prompts(vocab, batch, args.prompt, cfg.seed)
            key = jax.random.key(0)
            t0 = time.perf_counter()
            compiled = decode.lower(
                graphdef, params, prompts, key, rules=rules, slots=slots, guidance=guidance
            ).compile()
            compile_s = time.perf_counter() - t0
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                out = jax.block_until_ready(compiled(params, prompts, key))
                times.append(time.perf_counter() - t0)
            decoded = int(np.sum(np.asarray(out.end) - prompt_frames))
            if decoded != batch * answer_frames:
                raise RuntimeError(f"decoded {decoded} frames, expected {batch * answer_frames}")
            best = min(times)
            results.append(
                {
                    "batch": batch,
                    "frames_per_s": round(decoded / best, 1),
                    "step_ms": round(1e3 * best / answer_frames, 3),
                    "decode_s": round(best, 3),
                    "compile_s": round(compile_s, 1),
                }
            )
    print(
        json.dumps(
            {
                "config": args.config,
                "layers": cfg.model.layers,
                "hidden": cfg.model.hidden,
                "dtype": cfg.runtime.dtype,
                "device": jax.devices()[0].device_kind,
                "devices": jax.device_count(),
                "cfg": guidance,
                "prompt_frames": prompt_frames,
                "answer_frames": answer_frames,
                "slots": slots,
                "results": results,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
