"""When a caller has finished speaking: the turn-taking policy of calls, pure (no I/O).

Two modes (`ASSISTANT_TURN_DETECTION`):

- `silence`: an utterance ends after `ASSISTANT_VAD_END_SILENCE_MS` of silence, nothing else.
- `model`: after `ASSISTANT_TURN_CHECK_MS` of silence the call asks the end-of-turn model
  (fusion/turn_model.py) about the utterance so far; at the same moment the recognizer starts
  its speculative transcript of the same audio. `turn_complete` decides from both: the turn
  is over when the model's probability reaches the threshold and the transcript does not
  trail off. Otherwise the caller may go on, and the utterance ends only when they pause
  again and that pause is judged complete, or after `ASSISTANT_TURN_MAX_SILENCE_MS`.

The transcript check exists because the audio model alone said "complete" for a fifth of
espeak-ng phrases cut mid-sentence (after "my", "the", "to", "um"), measured here on 60
complete and 60 cut phrases in five voices through 8 kHz mu-law with line noise and the VAD:
Whisper then writes "I'd like to cancel my..." or "Can you tell me how to?", and a phrase that
ends on a determiner, a preposition, a conjunction, a filler or "..." is not a finished
request whatever its melody. On that set, at threshold 0.5, the check brought the cut phrases
judged complete from 22% to 12% and vetoed none of the complete phrases the model had judged
complete (docs/voice.md, fusion/weights/turn_model.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

__all__ = ["CHECK_MS", "MAX_SILENCE_MS", "TurnPolicy", "trails_off", "turn_complete"]

TurnDetection = Literal["model", "silence"]

# Silence before the model is asked, and the longest silence when it says "not yet" (longer
# than the mid-sentence pauses of up to 900 ms that must not cut an utterance in two).
CHECK_MS: Final = 200
MAX_SILENCE_MS: Final = 1300

# Words after which an English request cannot end: determiners and possessives,
# prepositions, conjunctions, auxiliaries and subject pronouns, and hesitation fillers.
_DANGLING: Final = frozenset(
    (  # noqa: SIM905 (word lists read best as text)
        "a an the my your our their his her its this that these those some any every no "
        "to of for in on at by with from into onto about as than like through over under after "
        "before between without and or but so because if when while although though unless "
        "until whether nor um uh er erm hmm mm ah eh "
        "is am are was were be been being do does did have has had can could will would shall "
        "should may might must i i'm i've i'd i'll you we they he she"
    ).split()
)
_WORD: Final = re.compile(r"[a-z]+(?:'[a-z]+)?")
_TRAILING: Final = ("...", "\u2026", ",", "-", ";", ":")


@dataclass(frozen=True, slots=True)
class TurnPolicy:
    detection: TurnDetection = "silence"
    # The end-of-turn model's probability at or above which a pause ends the turn.
    threshold: float = 0.5
    # When the model cannot answer (overloaded, or not loaded), a pause ends after this much
    # silence, as in the silence mode.
    fallback_silence_ms: int = 500

    def __post_init__(self) -> None:
        if self.detection not in ("model", "silence"):
            raise ValueError(f"unknown turn detection {self.detection!r}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError("TurnPolicy.threshold must lie in (0, 1)")
        if self.fallback_silence_ms < 1:
            raise ValueError("TurnPolicy.fallback_silence_ms must be positive")


def trails_off(transcript: str) -> bool:
    """True when the text stops mid-phrase: on "...", a comma or dash, or a word that cannot
    end a sentence ("I'd like to cancel my", "how to?", "and um")."""
    text = transcript.strip()
    if not text:
        return False
    if text.endswith(_TRAILING):
        return True
    words = _WORD.findall(text.lower().replace("\u2019", "'"))
    return bool(words) and words[-1] in _DANGLING


def turn_complete(probability: float, transcript: str | None, threshold: float) -> bool:
    """The caller has finished: the model says so and the transcript (when there is one yet)
    does not trail off."""
    if probability < threshold:
        return False
    return transcript is None or not trails_off(transcript)
