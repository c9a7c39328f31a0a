"""TTS evaluation: transcribe generated speech with a local ASR model and score the word
error rate against the transcript.

The ASR model is any HF speech-recognition directory (Whisper, wav2vec2 CTC, ...) given as
``assets.asr``, loaded with ``transformers.pipeline`` from disk. WER is ``jiwer``'s, on
both texts normalised as the caption metrics tokenize them (lowercase, no punctuation);
without ``jiwer`` installed the WER is reported as skipped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bagpiper_jax.audio_io import SAMPLE_RATE, resample
from bagpiper_jax.eval.captions import tokenize
from bagpiper_jax.eval.embeddings import MetricModelError, hf_model_directory
from bagpiper_jax.eval.scores import Score, bootstrap

JIWER_MISSING = "jiwer is not installed (pip install jiwer)"


class Transcriber:
    """Texts of 16 kHz waveforms from a local HF ASR model directory."""

    def __init__(self, directory: str | Path, batch: int = 8):
        directory = hf_model_directory(directory, "assets.asr", "speech-recognition model")
        try:
            from transformers import pipeline  # optional (the convert extra); imported only for tts items
        except ImportError as e:
            raise MetricModelError(f"the TTS metrics need torch and transformers: {e}") from e
        self.pipe = pipeline("automatic-speech-recognition", model=str(directory), device="cpu")
        self.sample_rate = self.pipe.feature_extractor.sampling_rate
        self.batch = batch

    def __call__(self, wavs: list[np.ndarray], sample_rate: int = SAMPLE_RATE) -> list[str]:
        inputs = [
            {"raw": resample(w, sample_rate, self.sample_rate).astype(np.float32), "sampling_rate": self.sample_rate}
            for w in wavs
        ]
        return [out["text"] for out in self.pipe(inputs, batch_size=self.batch)]


def normalise(text: str) -> str:
    return " ".join(tokenize(text))


def word_errors(hypotheses: list[str], references: list[str]) -> np.ndarray:
    """Per item ``[n, 2]``: word errors (substitutions + deletions + insertions) and reference
    words, by ``jiwer`` on normalised texts. Raises ImportError without jiwer."""
    import jiwer  # optional: only tts items need it

    rows = []
    for hyp, ref in zip(hypotheses, references):
        out = jiwer.process_words(normalise(ref), normalise(hyp) or "")
        rows.append((out.substitutions + out.deletions + out.insertions, out.substitutions + out.deletions + out.hits))
    return np.asarray(rows, np.float64)


def wer_score(errors: np.ndarray) -> Score:
    """Corpus WER (all errors over all reference words) of :func:`word_errors` rows."""
    return bootstrap(lambda idx: errors[idx, 0].sum() / max(errors[idx, 1].sum(), 1.0), len(errors))
