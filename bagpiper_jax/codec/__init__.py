"""XCodec audio tokenizer in Flax NNX (HF ``XcodecModel`` parity): HuBERT semantic path,
DAC acoustic encoder/decoder, residual VQ, the batched tokenizer and delay interleave.

    from bagpiper_jax.checkpoint.frozen_modules import load_codec
    tok = XCodecTokenizer(load_codec("codec_params/"))   # from `bagpiper-convert hf-xcodec`
    codes = tok.encode([wav])                            # [frames, 8] int32 per clip
"""

from bagpiper_jax.codec.config import XCodecConfig
from bagpiper_jax.codec.tokenizer import XCodecTokenizer
from bagpiper_jax.codec.xcodec import XCodec

__all__ = ["XCodec", "XCodecConfig", "XCodecTokenizer"]
