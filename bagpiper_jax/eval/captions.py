"""Captioning metrics: BLEU-1..4, ROUGE-L and CIDEr-D in pure Python, as coco-caption
(``pycocoevalcap``) computes them, plus METEOR and SPICE through ``aac-metrics`` when it
is installed (METEOR and SPICE also need Java).

Sentences are tokenized as coco-caption's PTB tokenizer leaves plain English: lowercased,
punctuation dropped, numbers such as ``1.5`` and words with inner apostrophes kept whole.
Each metric returns per-item values and its corpus score; docs/evaluation.md gives the
formulas and the published values the tests reproduce.
"""

from __future__ import annotations

import dataclasses
import math
import re
import shutil
from collections import Counter
from collections.abc import Sequence

import numpy as np

from bagpiper_jax.eval.scores import Score, mean_score, resamples

MAX_N = 4
CIDER_SIGMA = 6.0  # CIDEr-D's length penalty exp(-(len_c - len_r)^2 / (2 sigma^2))
_TINY, _SMALL = 1e-15, 1e-9  # coco-caption's BLEU smoothing of empty counts
_TOKEN = re.compile(r"\d+(?:[.,]\d+)+|[^\W_]+(?:'[^\W_]+)*")


def tokenize(sentence: str) -> list[str]:
    """Lowercased words, punctuation dropped."""
    return _TOKEN.findall(sentence.lower())


def ngrams(words: Sequence[str], n_max: int = MAX_N) -> Counter:
    """Counts of every 1..``n_max``-gram of ``words`` (tuples)."""
    return Counter(tuple(words[i : i + n]) for n in range(1, n_max + 1) for i in range(len(words) - n + 1))


# BLEU ---------------------------------------------------------------------------------


def bleu_stats(candidate: list[str], references: list[list[str]]) -> np.ndarray:
    """One item's BLEU sufficient statistics ``[2 + 2 * MAX_N]``: candidate length, the
    closest reference length (ties: the shorter), then matched and total n-grams for n = 1..4
    (matches clipped by the most any one reference holds)."""
    most = Counter()
    for ref in references:
        for gram, count in ngrams(ref).items():
            most[gram] = max(most[gram], count)
    length = len(candidate)
    ref_length = min((abs(len(r) - length), len(r)) for r in references)[1]
    correct, total = np.zeros(MAX_N), np.zeros(MAX_N)
    for gram, count in ngrams(candidate).items():
        correct[len(gram) - 1] += min(count, most[gram])
    for n in range(MAX_N):
        total[n] = max(0, length - n)
    return np.concatenate([[length, ref_length], correct, total])


def bleu_from_stats(stats: np.ndarray) -> np.ndarray:
    """BLEU-1..4 ``[..., 4]`` from summed statistics ``[..., 10]`` (corpus BLEU: sum the
    items' rows first). Geometric mean of smoothed precisions times the brevity penalty."""
    length, ref_length = stats[..., 0], stats[..., 1]
    correct, total = stats[..., 2 : 2 + MAX_N], stats[..., 2 + MAX_N :]
    log_precision = np.cumsum(np.log((correct + _TINY) / (total + _SMALL)), axis=-1)
    bleu = np.exp(log_precision / np.arange(1, MAX_N + 1))
    ratio = (length + _TINY) / (ref_length + _SMALL)
    penalty = np.where(ratio < 1, np.exp(1 - 1 / np.maximum(ratio, _TINY)), 1.0)
    return bleu * penalty[..., None]


def bleu_scores(stats: np.ndarray) -> dict[str, Score]:
    """Corpus BLEU-1..4 of per-item statistics ``[n, 10]`` with bootstrap intervals."""
    value = bleu_from_stats(stats.sum(axis=0))
    draws = bleu_from_stats(stats[resamples(len(stats))].sum(axis=1))
    low, high = np.percentile(draws, [2.5, 97.5], axis=0)
    return {f"bleu_{n + 1}": Score(float(value[n]), len(stats), float(low[n]), float(high[n])) for n in range(MAX_N)}


# ROUGE-L ------------------------------------------------------------------------------

ROUGE_BETA = 1.2


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    row = [0] * (len(b) + 1)
    for x in a:
        prev = 0
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], prev + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l(candidate: list[str], references: list[list[str]]) -> float:
    """ROUGE-L F-measure (beta 1.2) of the best precision and best recall of the longest
    common subsequence over the references."""
    if not candidate:
        return 0.0
    common = [_lcs(candidate, r) for r in references]
    precision = max(c / len(candidate) for c in common)
    recall = max(c / len(r) for c, r in zip(common, references) if r)
    if precision == 0 or recall == 0:
        return 0.0
    return (1 + ROUGE_BETA**2) * precision * recall / (recall + ROUGE_BETA**2 * precision)


# CIDEr-D ------------------------------------------------------------------------------


@dataclasses.dataclass
class _TfIdf:
    vectors: list[dict]  # per n: n-gram -> tf * idf
    norms: np.ndarray  # [MAX_N]
    length: int  # coco-caption counts a sentence's bigrams as its length


def cider_d(candidates: list[list[str]], references: list[list[list[str]]]) -> np.ndarray:
    """Per-item CIDEr-D ``[n]`` (the corpus score is their mean): TF-IDF n-gram vectors with
    document frequencies over the items' reference sets, candidate weights clipped by the
    reference's, a Gaussian length penalty, averaged over n = 1..4 and the references, times
    10."""
    frequency = Counter(gram for refs in references for gram in {g for r in refs for g in ngrams(r)})
    log_items = math.log(float(len(references)))

    def tfidf(words: list[str]) -> _TfIdf:
        vectors, norms, length = [{} for _ in range(MAX_N)], np.zeros(MAX_N), 0
        for gram, count in ngrams(words).items():
            n = len(gram) - 1
            vectors[n][gram] = count * (log_items - math.log(max(1.0, frequency[gram])))
            norms[n] += vectors[n][gram] ** 2
            length += count if n == 1 else 0
        return _TfIdf(vectors, np.sqrt(norms), length)

    def similarity(c: _TfIdf, r: _TfIdf) -> np.ndarray:
        value = np.zeros(MAX_N)
        for n in range(MAX_N):
            for gram, weight in c.vectors[n].items():
                value[n] += min(weight, r.vectors[n].get(gram, 0.0)) * r.vectors[n].get(gram, 0.0)
            if c.norms[n] and r.norms[n]:
                value[n] /= c.norms[n] * r.norms[n]
        return value * math.exp(-((c.length - r.length) ** 2) / (2 * CIDER_SIGMA**2))

    scores = []
    for cand, refs in zip(candidates, references):
        c = tfidf(cand)
        total = sum(similarity(c, tfidf(r)) for r in refs)
        scores.append(10.0 * float(np.mean(total)) / len(refs))
    return np.asarray(scores)


# All of them ------------------------------------------------------------------------


def caption_scores(candidates: list[str], references: list[list[str]]) -> tuple[dict, list[dict], dict]:
    """Every captioning metric over items ``candidates[i]`` / ``references[i]`` (each a
    non-empty list of strings). Returns ``(scores, per_item, skipped)``: corpus
    :class:`Score` s by name, each item's own values, and the metrics that could not run
    with the reason."""
    cands = [tokenize(c) for c in candidates]
    refs = [[tokenize(r) for r in rs] for rs in references]
    stats = np.stack([bleu_stats(c, r) for c, r in zip(cands, refs)])
    item_bleu = bleu_from_stats(stats)
    rouge = np.asarray([rouge_l(c, r) for c, r in zip(cands, refs)])
    cider = cider_d(cands, refs)
    scores = {**bleu_scores(stats), "rouge_l": mean_score(rouge), "cider_d": mean_score(cider)}
    per_item = [
        {**{f"bleu_{n + 1}": float(item_bleu[i, n]) for n in range(MAX_N)}, "rouge_l": rouge[i], "cider_d": cider[i]}
        for i in range(len(cands))
    ]
    external, skipped = external_caption_metrics(candidates, references)
    for name, values in external.items():
        scores[name] = mean_score(values)
        for item, v in zip(per_item, values):
            item[name] = float(v)
    return scores, [{k: float(v) for k, v in item.items()} for item in per_item], skipped


def external_caption_metrics(candidates: list[str], references: list[list[str]]) -> tuple[dict, dict]:
    """METEOR and SPICE per item through ``aac-metrics`` (which runs their Java code), when
    it is installed and ``java`` is on the PATH; otherwise each is listed as skipped."""
    reasons = {}
    if shutil.which("java") is None:
        reasons = {"meteor": "java is not on the PATH", "spice": "java is not on the PATH"}
    try:
        from aac_metrics import functional as aac  # optional: the METEOR/SPICE Java wrappers
    except ImportError:
        reasons = dict.fromkeys(("meteor", "spice"), "aac-metrics is not installed (pip install aac-metrics)")
    if reasons:
        return {}, reasons
    values, skipped = {}, {}
    for name in ("meteor", "spice"):
        try:
            _, per_item = getattr(aac, name)(candidates, references)
            values[name] = np.asarray(per_item[name], np.float64)
        except Exception as e:  # a missing jar or a Java failure must not end the run
            skipped[name] = f"aac-metrics {name} failed: {type(e).__name__}: {e}"
    return values, skipped
