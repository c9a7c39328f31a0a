"""Generation (docs/generation.md): jitted KV-cache multi-stream decoding with restricted sampling
and CFG, caption-then-process helpers, decoding answers to text and 16 kHz audio.

Modules: :mod:`~.rules` (allowed ids and row state per step), :mod:`~.sampling`,
:mod:`~.decode` (prefill + ``lax.while_loop``), :mod:`~.prompts` (messages -> rows),
:mod:`~.output` (frames -> segments -> codes/text), :mod:`~.checkpoint` (params to
generate with), :mod:`~.generator` (the :class:`Generator` API).
"""

from bagpiper_jax.generate.generator import Answer, Generation, Generator

__all__ = ["Answer", "Generation", "Generator"]
