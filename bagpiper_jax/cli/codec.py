"""``bagpiper-codec``: XCodec tokenize / detokenize single files.

    bagpiper-codec encode --codec DIR IN.wav OUT.npy [--channel N] [--bandwidth KBPS]
    bagpiper-codec decode --codec DIR IN.npy OUT.wav

``encode`` reads any format and sample rate soundfile can read, resamples to 16 kHz with
soxr "VHQ" (band-limited, linear phase), averages the channels to mono unless
``--channel`` picks one, and writes int32 codes ``[frames, num_quantizers]``. ``decode``
reads such an array and writes a 16 kHz 16-bit PCM wav. ``DIR`` is a codec params
directory from ``bagpiper-convert hf-xcodec``.
"""

from __future__ import annotations

import argparse

import numpy as np

from bagpiper_jax.audio_io import AudioError, load_audio, save_audio
from bagpiper_jax.checkpoint.frozen_modules import load_codec, load_codec_config
from bagpiper_jax.cli.command import add_common_flags, run
from bagpiper_jax.codec.tokenizer import XCodecTokenizer, check_codes
from bagpiper_jax.errors import BagpiperError


def _encode(args) -> None:
    cfg = load_codec_config(args.codec)
    wav = load_audio(args.input, sample_rate=cfg.sample_rate, channel=args.channel)
    if wav.shape[0] < cfg.min_samples:
        raise AudioError(
            f"audio file {args.input} has {wav.shape[0]} samples at {cfg.sample_rate} Hz; "
            f"at least {cfg.min_samples} are needed for one codec frame"
        )
    num_quantizers = cfg.quantizers_for_bandwidth(args.bandwidth)
    codes = XCodecTokenizer(load_codec(args.codec), batch_size=1).encode([wav], bandwidth=args.bandwidth)[0]
    np.save(args.output, codes)
    print(f"{args.input}: {wav.shape[0]} samples -> codes {codes.shape} ({num_quantizers} codebooks) in {args.output}")


def _decode(args) -> None:
    cfg = load_codec_config(args.codec)
    try:
        codes = np.load(args.input, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise BagpiperError(f"cannot read codes from {args.input}: {e}") from e
    try:
        check_codes(codes, cfg, name=f"codes in {args.input}")
    except ValueError as e:
        raise BagpiperError(str(e)) from e
    wav = XCodecTokenizer(load_codec(args.codec), batch_size=1).decode([codes])[0]
    save_audio(args.output, wav, cfg.sample_rate)
    print(f"{args.input}: codes {codes.shape} -> {wav.shape[0]} samples in {args.output}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bagpiper-codec", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    enc = sub.add_parser("encode", help="audio file -> codes .npy [frames, num_quantizers]")
    enc.add_argument("--codec", required=True, help="codec params directory")
    enc.add_argument("--channel", type=int, default=None, help="pick this channel (default: average all)")
    enc.add_argument(
        "--bandwidth",
        type=float,
        default=None,
        help="kbps, one of the codec's target bandwidths (default: the highest, 8 codebooks)",
    )
    enc.add_argument("input")
    enc.add_argument("output")
    enc.set_defaults(run=_encode)
    dec = sub.add_parser("decode", help="codes .npy [frames, n] -> 16-bit wav")
    dec.add_argument("--codec", required=True, help="codec params directory")
    dec.add_argument("input")
    dec.add_argument("output")
    dec.set_defaults(run=_decode)
    add_common_flags(parser)
    args = parser.parse_args(argv)
    return run(f"bagpiper-codec {args.command}", args, args.run, distributed=False)


if __name__ == "__main__":
    raise SystemExit(main())
