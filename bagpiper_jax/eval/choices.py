"""Multiple-choice questions (MMAU / AIR-Bench style): the prompt and the answer-extraction
rule.

The prompt is the question, then (unless the item says otherwise) ``Choices: (A) ... (B)
...`` on the next line. The model's answer text is mapped to a choice by this rule, first
match wins (docs/evaluation.md, MCQ):

1. **Letter**: the answer is a choice letter alone (``B``), or starts with ``(B)``, ``B)``,
   ``B.`` or ``B:``, or says ``answer is B`` / ``answer: (B)`` anywhere (any case). A
   sentence starting with the word "A" is not a letter. Letters past the number of choices
   do not count.
2. **Text**: exactly one choice's words occur in the answer as a whole-word phrase
   (lowercased, punctuation ignored). A choice contained in a longer matching choice
   (``chirp`` in ``rising chirp``) yields to the longer one.
3. Otherwise no choice: the item counts as wrong and its ``extracted`` is ``null``.
"""

from __future__ import annotations

import re
import string

LETTERS = string.ascii_uppercase
_LEADING_LETTER = re.compile(r"^\s*(?:\(([A-Za-z])\)|([A-Za-z])[).:]|([A-Za-z])\s*$)")
_STATED_LETTER = re.compile(r"answer\s*(?:is|:)\s*\(?([A-Za-z])\)?(?:[\s.,;:)]|$)", re.IGNORECASE)
_WORDS = re.compile(r"[^\W_]+")


def mcq_prompt(question: str, choices: list[str], show_choices: bool = True) -> str:
    """The text of an MCQ prompt: the question and, with ``show_choices``, the lettered choices."""
    if not show_choices:
        return question
    return question + "\nChoices: " + " ".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(choices))


def _words(text: str) -> str:
    return " " + " ".join(_WORDS.findall(text.lower())) + " "


def extract_choice(answer: str, choices: list[str]) -> int | None:
    """The index of the choice ``answer`` picks by the module's rule, or None."""
    for pattern in (_LEADING_LETTER, _STATED_LETTER):
        match = pattern.search(answer)
        letter = next((g for g in match.groups() if g), None) if match else None
        if letter and LETTERS.index(letter.upper()) < len(choices):
            return LETTERS.index(letter.upper())
    text = _words(answer)
    found = [i for i, c in enumerate(choices) if _words(c).strip() and _words(c) in text]
    found = [i for i in found if not any(j != i and _words(choices[i]) in _words(choices[j]) for j in found)]
    return found[0] if len(found) == 1 else None
