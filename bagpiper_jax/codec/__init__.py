"""XCodec audio tokenizer in Flax NNX (HF ``XcodecModel`` parity): HuBERT semantic path,
DAC acoustic encoder/decoder, residual VQ, HF weight import/export, delay interleave.

    from bagpiper_jax.codec import XCodecTokenizer
    tok = XCodecTokenizer.load("codec_params/")   # from `bagpiper-convert hf-xcodec`
    codes = tok.encode([wav])                     # [frames, 8] int32 per clip
"""
from bagpiper_jax.codec.checkpoint import load_codec
from bagpiper_jax.codec.config import XCodecConfig
from bagpiper_jax.codec.tokenizer import XCodecTokenizer
from bagpiper_jax.codec.xcodec import XCodec

__all__ = ["XCodec", "XCodecConfig", "XCodecTokenizer", "load_codec"]
