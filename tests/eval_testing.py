"""Tiny random metric models for the evaluation tests, built locally (no network): an HF
``ClapModel`` with its processor, and a wav2vec2 CTC speech recognizer."""

from __future__ import annotations

import json
from pathlib import Path

# The width every tiny transformer here shares.
TOY = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37)
WORDS = ["a", "loud", "quiet", "sine", "tone", "chirp", "noise", "burst", "silence", "hertz", "seconds", "hello"]


def write_tiny_clap(directory: Path) -> Path:
    """A random ClapModel (HTSAT audio tower and RoBERTa text tower at toy width, 16-d
    embeddings) with a byte-level BPE tokenizer and a 48 kHz feature extractor."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor, RobertaTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        [" ".join(WORDS)] * 4, vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    )
    bpe.save_model(str(directory))
    tokenizer = RobertaTokenizerFast(
        vocab_file=str(directory / "vocab.json"), merges_file=str(directory / "merges.txt")
    )
    extractor = ClapFeatureExtractor(feature_size=16, sampling_rate=48_000, max_length_s=2, truncation="rand_trunc")
    config = ClapConfig(
        text_config=dict(**TOY, vocab_size=len(tokenizer), max_position_embeddings=64, projection_dim=16),
        audio_config=dict(
            **TOY | dict(num_attention_heads=[2, 2], depths=[1, 1]),
            num_mel_bins=16,
            spec_size=64,
            window_size=4,
            patch_size=2,
            patch_stride=2,
            patch_embeds_hidden_size=16,
            projection_dim=16,
        ),
        projection_dim=16,
    )
    ClapModel(config).save_pretrained(directory)
    ClapProcessor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(directory)
    return directory


def write_tiny_asr(directory: Path) -> Path:
    """A random wav2vec2 CTC recognizer over characters, at toy width."""
    from transformers import (
        Wav2Vec2Config,
        Wav2Vec2CTCTokenizer,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForCTC,
        Wav2Vec2Processor,
    )

    directory.mkdir(parents=True, exist_ok=True)
    chars = sorted(set("".join(WORDS)))
    vocab = {"<pad>": 0, "<unk>": 1, "|": 2, **{c: i + 3 for i, c in enumerate(chars)}}
    (directory / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = Wav2Vec2CTCTokenizer(str(directory / "vocab.json"), word_delimiter_token="|")
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16_000, return_attention_mask=True)
    config = Wav2Vec2Config(
        **TOY,
        vocab_size=len(vocab),
        conv_dim=(16, 16),
        conv_stride=(5, 4),
        conv_kernel=(10, 4),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        pad_token_id=0,
    )
    Wav2Vec2ForCTC(config).save_pretrained(directory)
    Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(directory)
    return directory
