"""``bagpiper-convert``: weight conversions, one subcommand per source format (the
functions of :mod:`bagpiper_jax.convert.commands`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from bagpiper_jax.audio_encoder.tower import parameter_count
from bagpiper_jax.checkpoint.frozen_modules import load_tower_config
from bagpiper_jax.cli.command import add_common_flags, run
from bagpiper_jax.convert import commands


def _wrote(written) -> int:
    files = [written] if isinstance(written, Path) else written
    print(f"wrote {files[0]}" if len(files) == 1 else f"wrote {len(files)} files to {files[0].parent}")
    return 0


def _hf_audio_encoder(args: argparse.Namespace) -> int:
    out = commands.convert_hf_audio_encoder(args.hf, args.out)
    config = load_tower_config(out)
    print(f"wrote audio tower ({parameter_count(config):,} parameters, {config.encoder_layers} layers) to {out}")
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
        help="Bagpiper checkpoint -> PyTorch reference layout (safetensors)",
        description=commands.to_torch.__doc__,
    )
    p.add_argument("--checkpoint", required=True, help="model checkpoint, or run directory (holding checkpoints/)")
    p.add_argument("--step", type=int, help="step of a run directory (default: the latest)")
    p.add_argument("--out", required=True, help="FILE.safetensors, or a directory (sharded above --max-shard-size)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), help="output dtype (default: as stored)")
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
        help="write a plain HF Qwen3 directory: the backbone with the text rows only",
    )
    p.set_defaults(
        body=lambda a: _wrote(commands.to_torch(a.checkpoint, a.out, a.step, a.dtype, a.max_shard_size, a.hf_text_only))
    )

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
