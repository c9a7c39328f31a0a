"""``bagpiper-audio-features``: continuous audio-encoder output for one audio file.

Reads any sample rate / channel count (resampled to 16 kHz and downmixed, or one channel
picked), computes the log-mel features (waveform normalised unless ``--no-normalize``,
truncated at 300 s) and runs the audio tower; writes float32 ``[tokens, output_dim]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from flax import nnx

from bagpiper_jax.audio_encoder.features import HOP, SAMPLE_RATE, log_mel, num_frames
from bagpiper_jax.audio_io import AudioError, load_audio
from bagpiper_jax.checkpoint.errors import CheckpointError
from bagpiper_jax.checkpoint.frozen_modules import load_tower
from bagpiper_jax.cli.command import add_common_flags, run


def _features(args: argparse.Namespace) -> int:
    wav = load_audio(args.input, SAMPLE_RATE, channel=args.channel)
    if num_frames(len(wav)) == 0:
        raise AudioError(
            f"audio file {args.input} has {len(wav)} samples at {SAMPLE_RATE} Hz, fewer than one mel frame ({HOP})"
        )
    try:
        tower = load_tower(args.encoder)
    except CheckpointError as e:
        raise CheckpointError(f"cannot load audio encoder: {e}") from e
    features = log_mel(wav, n_mels=tower.config.num_mel_bins, normalize=not args.no_normalize)
    outputs, token_lengths = nnx.jit(lambda t, f, n: t(f, n))(tower, features[None], np.array([len(features)]))
    result = np.asarray(outputs[0, : int(token_lengths[0])], np.float32)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    np.save(args.output, result)
    print(f"wrote {result.shape[0]} x {result.shape[1]} encoder frames to {args.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bagpiper-audio-features", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--encoder", required=True, help="audio encoder params directory (bagpiper-convert hf-audio-encoder output)"
    )
    parser.add_argument("input", help="audio file (wav, flac, ogg)")
    parser.add_argument("output", help="output .npy file")
    parser.add_argument(
        "--no-normalize", action="store_true", help="skip the zero-mean/unit-variance waveform normalisation"
    )
    parser.add_argument("--channel", type=int, default=None, help="use this channel instead of the average")
    add_common_flags(parser)
    return run(parser.prog, parser.parse_args(argv), _features, distributed=False)


if __name__ == "__main__":
    raise SystemExit(main())
