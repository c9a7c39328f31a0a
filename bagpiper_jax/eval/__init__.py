"""Evaluation (docs/evaluation.md): eval manifests of caption / mcq / open_qa /
text_to_audio / tts items, generated through the :class:`~bagpiper_jax.generate.Generator`
and scored with the field's metrics, each with its sample count and a bootstrap 95%
interval.

Modules: :mod:`~.manifest` (the JSONL items), :mod:`~.scores` (``Score``, bootstrap),
:mod:`~.captions` (BLEU, ROUGE-L, CIDEr-D; METEOR, SPICE via aac-metrics), :mod:`~.choices`
(MCQ prompt and answer extraction), :mod:`~.embeddings` (Fréchet distance, CLAP score),
:mod:`~.speech` (ASR + WER), :mod:`~.runner` (one run: generate, score, write),
:mod:`~.demo` (the demo eval set), :mod:`~.periodic` (scoring during training).
"""
