"""The reply text for a turn and how it is cut into streamed deltas.

Until response generation lands, the assistant acknowledges each message plainly; the reply
never claims an intent or emotion that no model produced.
"""

from __future__ import annotations

ACKNOWLEDGEMENT = "Thanks, I have your message and it is saved with your conversation."


def compose_acknowledgement() -> str:
    return ACKNOWLEDGEMENT


def stream_chunks(text: str, words_per_chunk: int = 4) -> list[str]:
    """Cut a reply into word-aligned pieces whose concatenation is the text."""
    words = text.split(" ")
    return [
        " ".join(words[i : i + words_per_chunk]) + (" " if i + words_per_chunk < len(words) else "")
        for i in range(0, len(words), words_per_chunk)
    ]
