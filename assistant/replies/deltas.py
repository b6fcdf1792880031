"""How a finished reply is cut into streamed deltas."""

from __future__ import annotations

import re


def sentence_chunks(text: str) -> list[str]:
    """Cut a finished reply after each sentence; the concatenation is the text.

    A reply the composer wrote at once gains nothing from word-sized deltas, which only
    multiply frames; a sentence at a time still lets a widget show it progressively.
    """
    pieces = [p for p in re.split(r"(?<=[.!?])(?=\s)", text) if p]
    return pieces or [text]
