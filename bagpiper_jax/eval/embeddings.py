"""Text-to-audio metrics from an audio-text embedding model: the Fréchet distance between
the embeddings of generated and reference clips, and the CLAP score (cosine similarity of
each generated clip to its caption).

The model is an HF ``ClapModel`` with its ``ClapProcessor`` in a local directory
(``assets.clap``; e.g. ``laion/clap-htsat-unfused`` downloaded once), never fetched from the
network. It needs torch and transformers (the ``convert`` extra).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bagpiper_jax.audio_io import SAMPLE_RATE, resample
from bagpiper_jax.errors import BagpiperError
from bagpiper_jax.eval.scores import Score, bootstrap, mean_score

FRECHET_BOOTSTRAP_ROUNDS = 200  # each round is an eigendecomposition of [dim, dim]


class MetricModelError(BagpiperError):
    """A metric model directory (CLAP, ASR) is missing or unusable."""


def hf_model_directory(directory: str | Path, key: str, kind: str) -> Path:
    """``directory`` (the value of config ``key``) if it holds an HF model's config.json."""
    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise MetricModelError(f"{directory}: no config.json; {key} must be a local HF {kind} directory")
    return directory


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to embeddings ``a [n, dim]`` and ``b [m, dim]``:
    ``|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2))``.

    ``tr((S_a S_b)^(1/2))`` is the trace of the square root of the symmetric ``S_a^(1/2) S_b
    S_a^(1/2)`` (same eigenvalues), taken from its eigenvalues: exact and real where
    ``scipy.linalg.sqrtm(S_a @ S_b)`` may return complex noise."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two sets of at least 2 embeddings of one width, got {a.shape} and {b.shape}")
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root_a = _sqrt_psd(cov_a)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cov_b @ root_a), 0, None)).sum()
    diff = a.mean(0) - b.mean(0)
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * cross)


def frechet_score(generated: np.ndarray, reference: np.ndarray) -> Score:
    """:func:`frechet_distance` with a bootstrap interval over the item pairs (resampled
    together: generated ``i`` and reference ``i`` come from one item)."""
    return bootstrap(
        lambda idx: frechet_distance(generated[idx], reference[idx]), len(generated), FRECHET_BOOTSTRAP_ROUNDS
    )


def clap_score(audio: np.ndarray, text: np.ndarray) -> Score:
    """Mean cosine similarity of paired audio and text embeddings ``[n, dim]``."""
    a = audio / np.linalg.norm(audio, axis=1, keepdims=True)
    t = text / np.linalg.norm(text, axis=1, keepdims=True)
    return mean_score((a * t).sum(axis=1))


class ClapEmbedder:
    """Audio and text embeddings ``[n, dim]`` (L2-normalised) from an HF CLAP directory."""

    def __init__(self, directory: str | Path, batch: int = 16):
        directory = hf_model_directory(directory, "assets.clap", "ClapModel")
        try:
            import torch  # optional (the convert extra); imported only when a CLAP model is used
            from transformers import ClapModel, ClapProcessor  # likewise optional
        except ImportError as e:
            raise MetricModelError(f"the CLAP metrics need torch and transformers: {e}") from e
        self._torch, self.batch = torch, batch
        self.model = ClapModel.from_pretrained(directory).eval()
        self.processor = ClapProcessor.from_pretrained(directory)
        extractor = self.processor.feature_extractor
        self.sample_rate, self.max_samples = extractor.sampling_rate, extractor.nb_max_samples

    @staticmethod
    def _pooled(out):
        vectors = getattr(out, "pooler_output", out)  # transformers 5 returns model outputs
        return vectors.detach().cpu().numpy().astype(np.float64)

    def audio(self, wavs: list[np.ndarray], sample_rate: int = SAMPLE_RATE) -> np.ndarray:
        """Embeddings of 16 kHz float waveforms, resampled to the model's rate and cut to its
        longest input (so the processor never crops at random)."""
        clips = [resample(w, sample_rate, self.sample_rate)[: self.max_samples] for w in wavs]
        out = []
        for i in range(0, len(clips), self.batch):
            inputs = self.processor(
                audio=clips[i : i + self.batch], sampling_rate=self.sample_rate, return_tensors="pt"
            )
            with self._torch.no_grad():
                out.append(self._pooled(self.model.get_audio_features(**inputs)))
        return _normalised(np.concatenate(out))

    def text(self, texts: list[str]) -> np.ndarray:
        out = []
        for i in range(0, len(texts), self.batch):
            inputs = self.processor(text=texts[i : i + self.batch], return_tensors="pt", padding=True)
            with self._torch.no_grad():
                out.append(self._pooled(self.model.get_text_features(**inputs)))
        return _normalised(np.concatenate(out))


def _normalised(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
