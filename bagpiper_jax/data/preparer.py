"""One example at a time: a manifest :class:`Example` -> a :class:`PreparedExample`.

- text -> token ids (the ``assets.tokenizer`` tokenizer);
- assistant audio -> 16 kHz mono -> XCodec codes (``assets.codec``; jitted,
  length-bucketed batches split over the host's local devices);
- user/system audio -> 16 kHz mono (truncated at ``data.max_audio_seconds``) -> FLAC bytes
  (``audio_io.encode_flac``; its log-mel is computed where the record is used).

Corpus preparation (:mod:`bagpiper_jax.data.prepare`) and generation prompts use it, so a
prompt is prepared exactly as the training data was.
"""

from __future__ import annotations

import jax
import numpy as np

from bagpiper_jax.audio_encoder.config import AudioEncoderConfig
from bagpiper_jax.audio_io import AudioError, encode_flac, load_audio
from bagpiper_jax.checkpoint.frozen_modules import load_codec, load_tower_config
from bagpiper_jax.codec.tokenizer import XCodecTokenizer
from bagpiper_jax.config import Config, ConfigError, MeshConfig
from bagpiper_jax.data.manifest import Example
from bagpiper_jax.data.records import PreparedExample, PreparedMessage
from bagpiper_jax.data.template import example_frames
from bagpiper_jax.data.text_tokenizer import TextTokenizer
from bagpiper_jax.errors import BagpiperError
from bagpiper_jax.sharding import make_mesh
from bagpiper_jax.vocab import Vocab

CODEC_ROWS_PER_DEVICE = 2  # clips per device in one codec call


class Skip(BagpiperError):
    """An input that is skipped; ``kind`` is its report category."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


def require_assets(cfg: Config) -> None:
    """Raises ``ConfigError`` unless the tokenizer and codec a preparation needs are named."""
    if not cfg.assets.tokenizer:
        raise ConfigError("assets.tokenizer must name a tokenizer.json (or its directory)")
    if not cfg.assets.codec:
        raise ConfigError("assets.codec must name a converted XCodec params directory")


class Preparer:
    """Turns manifest examples into prepared records (text tokens, codec codes, FLAC audio)."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.vocab = Vocab.from_config(cfg.model)
        require_assets(cfg)
        self.tokenizer = TextTokenizer(cfg.assets.tokenizer)
        self.tokenizer.check_fits(cfg.model.text_vocab_size)
        # Codec batches split over this host's devices (data-parallel; the codec replicated).
        devices = jax.local_devices()
        self.codec = XCodecTokenizer(
            load_codec(cfg.assets.codec),
            batch_size=CODEC_ROWS_PER_DEVICE * len(devices),
            mesh=make_mesh(MeshConfig(data=-1, fsdp=1, tensor=1), devices),
            rules=MeshConfig().rules,
        )
        if self.codec.cfg.codebook_size != cfg.model.codebook_size:
            raise ConfigError(
                f"codec {cfg.assets.codec} has codebook_size {self.codec.cfg.codebook_size}, "
                f"model.codebook_size is {cfg.model.codebook_size}"
            )
        self.max_samples = int(cfg.data.max_audio_seconds * 16_000)
        # mel frames -> encoder tokens of the configured tower (its n_window), as the pipeline counts them
        tower = load_tower_config(cfg.assets.audio_encoder) if cfg.assets.audio_encoder else AudioEncoderConfig()
        self.tokens_for = tower.tokens

    def prepare(self, examples: list[Example]) -> tuple[list[PreparedExample], list[tuple[str, str, str]]]:
        """Prepared examples (manifest order) and ``(id, kind, reason)`` per skipped one.

        An example that cannot fit a row (and is not text only) is known from its audio
        lengths and skipped before the codec spends anything on it."""
        skipped, staged, to_encode = [], [], []
        for ex in examples:
            try:
                messages, clips = self._stage(ex)
            except (AudioError, Skip) as e:
                skipped.append((ex.id, e.kind, str(e)))
                continue
            frames = example_frames(PreparedExample(ex.id, ex.task, 0, tuple(messages)), self.vocab, self.tokens_for)
            if frames > self.cfg.data.row_frames and not all(m.kind == "text" for m in messages):
                skipped.append((ex.id, "over-long", f"{frames} frames > data.row_frames={self.cfg.data.row_frames}"))
                continue
            to_encode += [(len(staged), j, wav) for j, wav in clips]
            staged.append((ex, messages))
        codes = self.codec.encode([w for _, _, w in to_encode]) if to_encode else []
        for (i, j, _), c in zip(to_encode, codes):
            m = staged[i][1][j]
            staged[i][1][j] = PreparedMessage(m.role, m.modality, "codes", np.asarray(c, np.int16))
        out = []
        for ex, messages in staged:
            prepared = PreparedExample(ex.id, ex.task, 0, tuple(messages))
            out.append(
                PreparedExample(
                    ex.id, ex.task, example_frames(prepared, self.vocab, self.tokens_for), prepared.messages
                )
            )
        return out, skipped

    def _stage(self, ex: Example) -> tuple[list[PreparedMessage], list[tuple[int, np.ndarray]]]:
        """An example's messages, assistant audio as codes of its frame count still to
        encode, and those clips ``(message index, 16 kHz wav)``; raises :class:`Skip` /
        ``AudioError`` for a bad input."""
        messages, clips = [], []
        for m in ex.messages:
            if m.modality == "text":
                tokens = self.tokenizer.encode(m.content)
                if not len(tokens):
                    raise Skip(f"text {m.content!r} has no tokens", "empty text")
                messages.append(PreparedMessage(m.role, m.modality, "text", tokens))
                continue
            wav = load_audio(m.content)
            if len(wav) < self.codec.hop_length:
                raise Skip(
                    f"audio file {m.content} is shorter than one codec frame "
                    f"({self.codec.hop_length} samples at 16 kHz)",
                    "too short audio",
                )
            wav = wav[: self.max_samples]
            if m.role == "assistant":
                clips.append((len(messages), wav))
                frames = self.codec.cfg.num_frames(len(wav))
                messages.append(PreparedMessage(m.role, m.modality, "codes", np.zeros((frames, 0), np.int16)))
            else:  # user audio: FLAC, log-mel computed where it is used
                flac = np.frombuffer(encode_flac(wav), np.uint8)
                messages.append(PreparedMessage(m.role, m.modality, "flac", flac, samples=len(wav)))
        return messages, clips
