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

import dataclasses
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from synthetic import decode_config, decode_parser, synthetic_prompt_ids

from bagpiper_jax.generate.decode import Prompts, decode
from bagpiper_jax.generate.rules import DecodeRules, modality_plan
from bagpiper_jax.model.create import init_model
from bagpiper_jax.sharding import make_mesh
from bagpiper_jax.vocab import Vocab


def main(argv=None):
    args = decode_parser(__doc__.splitlines()[0]).parse_args(argv)
    cfg = decode_config(args)
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
            ids = synthetic_prompt_ids(vocab, batch, args.prompt, cfg.seed)
            prompts = Prompts(jnp.asarray(ids), jnp.zeros((batch,), jnp.int32))
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
