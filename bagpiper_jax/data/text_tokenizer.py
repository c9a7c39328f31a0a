"""The text tokenizer: an HF ``tokenizers`` ``tokenizer.json`` (Qwen3's in real runs).

Ids returned are the tokenizer's own (``[0, vocab_size)``); :class:`bagpiper_jax.vocab.Vocab`
shifts them into the unified vocabulary. For the embedded demo, :func:`train_byte_bpe`
trains a small byte-level BPE on the demo captions (Qwen3's file cannot be downloaded
here); it is used through the same interface.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from bagpiper_jax.errors import BagpiperError


class TokenizerError(BagpiperError):
    """The tokenizer file is missing or does not fit the model's text vocabulary."""


class TextTokenizer:
    """An HF ``tokenizers`` tokenizer.json; ids are the tokenizer's own (``Vocab`` shifts them)."""

    def __init__(self, path: str | Path):
        path = Path(path)
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise TokenizerError(f"tokenizer file {file} does not exist (data.tokenizer)")
        try:
            self._tok = Tokenizer.from_file(str(file))
        except Exception as e:  # tokenizers raises a bare Exception for malformed files
            raise TokenizerError(f"cannot load tokenizer {file}: {e}") from e
        self.path = file

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def check_fits(self, text_vocab_size: int):
        if self.vocab_size > text_vocab_size:
            raise TokenizerError(
                f"tokenizer {self.path} has {self.vocab_size} ids but model.text_vocab_size is {text_vocab_size}"
            )

    def encode(self, text: str) -> np.ndarray:
        """Text -> int32 ids ``[tokens]`` (no special tokens added)."""
        return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, np.int32)

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)


def train_byte_bpe(texts: Iterable[str], vocab_size: int, out_file: str | Path) -> TextTokenizer:
    """Trains a byte-level BPE with at most ``vocab_size`` ids and saves it as tokenizer.json."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer)
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_file))
    return TextTokenizer(out_file)
