"""How a reply is cut into streamed deltas when it is not produced piece by piece."""

from __future__ import annotations


def stream_chunks(text: str, words_per_chunk: int = 4) -> list[str]:
    """Cut a reply into word-aligned pieces whose concatenation is the text."""
    words = text.split(" ")
    return [
        " ".join(words[i : i + words_per_chunk]) + (" " if i + words_per_chunk < len(words) else "")
        for i in range(0, len(words), words_per_chunk)
    ]
