"""What the models made of one user turn, as the reply side sees it: plain values, no tensors.

Any part may be missing: with no intent model `intent` is None, with no emotion model
`emotion` is None, and the reply must then not claim what nobody predicted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from assistant.replies.knowledge_base import OUT_OF_SCOPE_LABELS

# The service's emotion vocabulary. Emotion models may produce a subset (the fusion head has
# five of these); a label outside the set is a caller's bug, refused at construction.
EMOTIONS: tuple[str, ...] = (
    "angry",
    "frustrated",
    "sad",
    "anxious",
    "confused",
    "satisfied",
    "neutral",
)
# How negative each emotion is, for trends: only the order matters.
NEGATIVITY: dict[str, int] = {
    "satisfied": -1,
    "neutral": 0,
    "confused": 1,
    "sad": 2,
    "anxious": 2,
    "frustrated": 2,
    "angry": 3,
}

Ranked = tuple[tuple[str, float], tuple[str, float]]


def _probability(value: float, what: str) -> None:
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{what} must lie in [0, 1], got {value!r}")


@dataclass(frozen=True, slots=True)
class Understanding:
    """The predicted intent (with its confidence and the two best labels) and emotion."""

    intent: str | None = None
    confidence: float | None = None
    top2: Ranked | None = None
    emotion: str | None = None
    emotion_scores: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.confidence is not None:
            _probability(self.confidence, "confidence")
        if self.top2 is not None:
            for label, p in self.top2:
                _probability(p, f"top2 probability of {label!r}")
        if self.emotion is not None and self.emotion not in EMOTIONS:
            raise ValueError(f"unknown emotion {self.emotion!r}; expected one of {EMOTIONS}")
        for label, score in self.emotion_scores.items():
            _probability(score, f"emotion score of {label!r}")

    @property
    def out_of_scope(self) -> bool:
        return self.intent is not None and self.intent in OUT_OF_SCOPE_LABELS

    @property
    def margin(self) -> float | None:
        """How far the best label leads the second one; None without two labels."""
        if self.top2 is None:
            return None
        return self.top2[0][1] - self.top2[1][1]

    def intent_priors(self) -> dict[str, float]:
        """Probability the intent model gave each label it ranked (the two best, or one)."""
        if self.top2 is not None:
            return {label: p for label, p in self.top2}
        if self.intent is not None and self.confidence is not None:
            return {self.intent: self.confidence}
        return {}

    def emotion_score(self, emotion: str) -> float:
        """The model's score for `emotion`; a bare label without scores counts as certain."""
        if emotion in self.emotion_scores:
            return float(self.emotion_scores[emotion])
        return 1.0 if self.emotion == emotion else 0.0
