"""The unified Bagpiper vocabulary (docs/model.md, Vocabulary), computed from the model config.

Layout, in order: ``num_special`` special tokens, the text tokenizer's ids shifted by
``text_offset``, then one block of ``codebook_size + 1`` ids per codec stream whose first
id is that stream's audio pad. With the 8B defaults this gives 160,392 ids:
specials [0, 256), text [256, 152192), audio [152192, 160392).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from bagpiper_jax.config import ModelConfig

SPECIAL_TOKENS = (
    "<|pad|>",
    "<|bos|>",
    "<|eos|>",
    "<|eot|>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|text|>",
    "<|audio|>",
    "<|image|>",
    "<|video|>",
    "<|toolcall|>",
)
PAD, BOS, EOS, EOT, SYSTEM, USER, ASSISTANT, TEXT, AUDIO, IMAGE, VIDEO, TOOLCALL = range(12)
ROLE_IDS = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}
MODALITY_IDS = {"text": TEXT, "audio": AUDIO}


@dataclasses.dataclass(frozen=True)
class Vocab:
    """The id layout of the unified vocabulary (see the module docstring); frozen and
    hashable, so it can be a static argument of jitted functions."""

    num_special: int
    text_size: int
    num_streams: int
    codebook_size: int

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> Vocab:
        return cls(cfg.num_special, cfg.text_vocab_size, cfg.num_streams, cfg.codebook_size)

    @property
    def text_offset(self) -> int:
        return self.num_special

    @property
    def audio_offset(self) -> int:
        """First id of stream 0's audio block."""
        return self.num_special + self.text_size

    @property
    def stream_block(self) -> int:
        """Ids per audio stream: its pad plus one per code."""
        return self.codebook_size + 1

    @property
    def audio_size(self) -> int:
        """Ids in the audio range of all streams together (8,200 at 8B)."""
        return self.num_streams * self.stream_block

    @property
    def size(self) -> int:
        return self.audio_offset + self.audio_size

    def special_name(self, token_id: int) -> str:
        if not 0 <= token_id < self.num_special:
            raise ValueError(f"id {token_id} is not a special token (specials are [0, {self.num_special}))")
        return SPECIAL_TOKENS[token_id] if token_id < len(SPECIAL_TOKENS) else f"<|unused_{token_id}|>"

    def text_ids(self, tokens):
        """Text-tokenizer ids -> unified ids (array-friendly)."""
        tokens = np.asarray(tokens)
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.text_size):
            raise ValueError(f"text token ids must lie in [0, {self.text_size}), got [{tokens.min()}, {tokens.max()}]")
        return tokens + self.text_offset

    def audio_pad(self, stream: int) -> int:
        self._check_stream(stream)
        return self.audio_offset + self.stream_block * stream

    @property
    def audio_pads(self) -> np.ndarray:
        """int32 ``[num_streams]``: every stream's audio pad id."""
        return (self.audio_offset + self.stream_block * np.arange(self.num_streams)).astype(np.int32)

    def audio_ids(self, codes, stream: int):
        """Codec codes of one stream -> unified ids (array-friendly)."""
        codes = np.asarray(codes)
        if codes.size and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(
                f"codes of stream {stream} must lie in [0, {self.codebook_size}), got [{codes.min()}, {codes.max()}]"
            )
        return codes + self.audio_pad(stream) + 1

    def stream_range(self, stream: int) -> tuple[int, int]:
        """[start, end) of one stream's audio block, pad included."""
        start = self.audio_pad(stream)
        return start, start + self.stream_block

    def _check_stream(self, stream: int):
        if not 0 <= stream < self.num_streams:
            raise ValueError(f"stream {stream} out of range [0, {self.num_streams})")
