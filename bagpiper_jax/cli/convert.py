"""``bagpiper-convert``: weight conversions, one subcommand per source format (the
functions of :mod:`bagpiper_jax.convert.commands`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from bagpiper_jax.audio_encoder.tower import parameter_count
from bagpiper_jax.checkpoint.frozen_modules import load_tower_config
from bagpiper_jax.cli.command import add_common_flags, run
from bagpiper_jax.convert import commands, espnet


def _wrote(written) -> int:
    files = [written] if isinstance(written, Path) else written
    print(f"wrote {files[0]}" if len(files) == 1 else f"wrote {len(files)} files to {files[0].parent}")
    return 0


def _hf_audio_encoder(args: argparse.Namespace) -> int:
    out = commands.convert_hf_audio_encoder(args.hf, args.out)
    config = load_tower_config(out)
    print(f"wrote audio tower ({parameter_count(config):,} parameters, {config.encoder_layers} layers) to {out}")
    return 0


def _to_torch(a: argparse.Namespace) -> int:
    return _wrote(
        commands.to_torch(
            a.checkpoint,
            a.out,
            a.step,
            a.dtype,
            a.max_shard_size,
            a.hf_text_only,
            fmt=a.format,
            container=a.container,
            vocab_weight=a.vocab_weight,
            tokenizer=a.tokenizer,
        )
    )


def _check(a: argparse.Namespace) -> int:
    """Compares the logits of a checkpoint (model checkpoint or run) with an independent
    PyTorch forward (transformers Qwen3ForCausalLM plus the multi-stream embedding, adaptor
    and stream heads) of reference-layout weights on one packed row of text, delay-interleaved
    audio frames and continuous features; prints max |Δlogit| and the KL divergence per
    stream and fails above --max-kl."""
    from bagpiper_jax.convert import logit_check  # needs torch and transformers (the convert extra)

    logit_check.check(a.checkpoint, a.torch, a.step, a.dtype, a.max_kl)
    return 0


def _register(subparsers) -> None:
    p = subparsers.add_parser("hf-xcodec", help="HF XCodec directory -> codec params directory")
    p.add_argument("--hf", required=True, help="HF XCodec directory (config.json + weights)")
    p.add_argument("--out", required=True, help="output params directory")
    p.set_defaults(body=lambda a: _wrote(commands.convert_hf_xcodec(a.hf, a.out)))

    p = subparsers.add_parser(
        "hf-audio-encoder",
        help="HF Qwen3-Omni audio tower -> audio encoder params",
        description="Reads only the audio tower of an HF Qwen3-Omni directory (or a bare "
        "Qwen3OmniMoeAudioEncoder directory) and writes an audio encoder params directory.",
    )
    p.add_argument("--hf", required=True, help="HF Qwen3-Omni directory or bare audio encoder directory")
    p.add_argument("--out", required=True, help="output params directory")
    p.set_defaults(body=_hf_audio_encoder)

    p = subparsers.add_parser(
        "hf-qwen3",
        help="HF Qwen3 directory -> step-0 Bagpiper model checkpoint",
        description=commands.convert_hf_qwen3.__doc__,
    )
    p.add_argument("--hf", required=True, help="HF Qwen3 directory (config.json + safetensors)")
    p.add_argument("--config", help="run config (default: dimensions from the HF config, else 8B defaults)")
    p.add_argument("--out", required=True, help="output model checkpoint directory")
    p.set_defaults(body=lambda a: _wrote(commands.convert_hf_qwen3(a.hf, a.out, a.config)))

    p = subparsers.add_parser(
        "to-torch",
        help="Bagpiper checkpoint -> PyTorch: reference layout (safetensors), ESPnet .pt or vLLM directory",
        description=commands.to_torch.__doc__,
    )
    p.add_argument("--checkpoint", required=True, help="model checkpoint, or run directory (holding checkpoints/)")
    p.add_argument("--step", type=int, help="step of a run directory (default: the latest)")
    p.add_argument(
        "--out",
        required=True,
        help="safetensors: FILE.safetensors or a directory (sharded above --max-shard-size); "
        "espnet: FILE.pt; vllm: a directory",
    )
    p.add_argument(
        "--format",
        choices=commands.FORMATS,
        default="safetensors",
        help="safetensors: the reference layout; espnet: a .pt the reference's strict loader accepts "
        "(with vocab_weight); vllm: the vLLM fork's serving directory (default: safetensors)",
    )
    p.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        help="output dtype (default: as stored for safetensors, bfloat16 for espnet and vllm)",
    )
    default_shard = commands.DEFAULT_MAX_SHARD_SIZE
    p.add_argument(
        "--max-shard-size",
        type=commands.parse_size,
        default=commands.parse_size(default_shard),
        help=f"bytes per safetensors shard of a directory output, e.g. 2GB (default {default_shard})",
    )
    p.add_argument(
        "--hf-text-only",
        action="store_true",
        help="safetensors only: write a plain HF Qwen3 directory, the backbone with the text rows only",
    )
    p.add_argument(
        "--container",
        choices=espnet.CONTAINERS,
        default="plain",
        help='espnet only: the plain state dict (model.pt) or DeepSpeed\'s {"module": state dict} (default: plain)',
    )
    p.add_argument(
        "--vocab-weight",
        choices=espnet.VOCAB_WEIGHTS,
        help="espnet only: the vocab_weight written: recipe (1, and 1/num_streams for codec ids) or ones "
        "(older reference code); default: the one the checkpoint came with, else recipe",
    )
    p.add_argument(
        "--tokenizer",
        help="vllm only: directory of the served Bagpiper tokenizer's files (default: assets.tokenizer's directory)",
    )
    p.set_defaults(body=_to_torch)

    p = subparsers.add_parser(
        "check",
        help="compare a checkpoint's logits with an independent PyTorch forward of torch weights",
        description=_check.__doc__,
    )
    p.add_argument("--checkpoint", required=True, help="model checkpoint, or run directory (holding checkpoints/)")
    p.add_argument("--step", type=int, help="step of a run directory (default: the latest)")
    p.add_argument("--torch", required=True, help="reference-layout weights: a .pt or safetensors file/directory")
    p.add_argument(
        "--dtype", choices=("float32", "bfloat16"), default="float32", help="params and compute of both sides"
    )
    p.add_argument(
        "--max-kl",
        type=float,
        help="largest KL divergence accepted on any stream (default: 1e-4 in float32, 2e-2 in bfloat16)",
    )
    p.set_defaults(body=_check)

    p = subparsers.add_parser(
        "from-torch",
        help="PyTorch reference layout -> Bagpiper model checkpoint",
        description=commands.from_torch.__doc__,
    )
    p.add_argument("--torch", required=True, help="safetensors file/directory, or .pt/.bin (weights only)")
    p.add_argument("--config", required=True, help="run config giving the model dimensions")
    p.add_argument("--out", required=True, help="output model checkpoint directory")
    p.set_defaults(body=lambda a: _wrote(commands.from_torch(a.torch, a.config, a.out)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bagpiper-convert", description=__doc__.splitlines()[0])
    add_common_flags(parser)
    _register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return run(f"bagpiper-convert {args.command}", args, args.body)


if __name__ == "__main__":
    raise SystemExit(main())
