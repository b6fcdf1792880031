"""The follow-up detector: how much a message leans on what was said before it.

A logistic regression over the message's sentence embedding (the all-MiniLM-L6-v2 vector the
intent head reads, so it costs one dot product per turn) and a few surface cues of the words
(`CUES`: a pronoun standing for something said before, an opening "and" or "what about", a
repetition, an exasperated word, a very short or short message, a question mark), which the
embedding of a short message carries only faintly. It was fitted by
`assistant/app/follow_up_training.py` (`assistant train follow-ups`) on stand-alone requests
(Banking77 train, CLINC150 train and its oos_train) against elliptical follow-ups written for
it ("how much will that cost me", "it still doesn't work"), and ships as
`follow_up_model.json` beside this module with the data it was fitted on, its licences and
the command that rebuilt it. The dialogue policy
(`assistant.replies.dialogue`) reads a message with a topic open within that topic when this
score is high and the heads are not sure of another request; docs/conversation.md
("Dialogue state") says why a model here and not a rule.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

MODEL_PATH = Path(__file__).resolve().parent / "follow_up_model.json"

Vector = npt.NDArray[np.float32]

_WORD = re.compile(r"\w+")
_CUE_PATTERNS = (
    re.compile(r"\b(?:it|that|this|they|them|those|these)\b", re.I),
    re.compile(
        r"^\W*(?:and|but|so|ok|okay|alright|right|hmm+|also|then|what about|how about|"
        r"what if|even)\b",
        re.I,
    ),
    re.compile(r"\b(?:again|still|already|same|next time|another)\b", re.I),
    re.compile(
        r"\b(?:ridiculous|unacceptable|annoy\w*|frustrat\w*|fed up|seriously|ugh|kidding|"
        r"worst)\b",
        re.I,
    ),
)
# The names of the cue features, in the order of the weights after the embedding's.
CUES = (
    "pronoun",
    "opening",
    "repetition",
    "exasperation",
    "at_most_3_words",
    "at_most_6_words",
    "question",
)
# The cues enter at this scale, so that the embedding's weights and theirs regularise alike.
CUE_SCALE = 0.5


def cue_features(text: str) -> Vector:
    """The message's surface cues as 0/1 values, scaled by `CUE_SCALE`, in `CUES` order."""
    words = len(_WORD.findall(text))
    found = [bool(p.search(text)) for p in _CUE_PATTERNS]
    found += [words <= 3, words <= 6, text.strip().endswith("?")]
    return np.asarray(found, dtype=np.float32) * CUE_SCALE


def features(vector: npt.ArrayLike, text: str) -> Vector:
    """What the detector reads of a message: its L2-normalised embedding, then its cues."""
    v = np.asarray(vector, dtype=np.float32).reshape(-1)
    v = v / max(float(np.linalg.norm(v)), 1e-12)
    return np.concatenate([v, cue_features(text)]).astype(np.float32)


class FollowUpModelError(ValueError):
    """The model file is missing a field or its weights do not fit the embedding."""


@dataclass(frozen=True, slots=True)
class FollowUpModel:
    """`score(vector)`: the probability that the message needs the conversation to be read."""

    weights: Vector  # [D + len(CUES)]: the embedding's, then the cues' (`features`)
    bias: float
    about: dict[str, Any]  # provenance: data, licences, command, figures

    @property
    def dim(self) -> int:
        """The embedding's dimension."""
        return int(self.weights.shape[0]) - len(CUES)

    def score(self, vector: npt.ArrayLike, text: str) -> float:
        """The probability that the message (`text`, embedded as `vector`) leans on what was
        said before it."""
        x = features(vector, text)
        if x.shape[0] != self.weights.shape[0]:
            raise ValueError(f"a {x.shape[0] - len(CUES)}-d vector for a {self.dim}-d model")
        z = float(x @ self.weights) + self.bias
        # The logistic function, written so that neither tail overflows.
        if z >= 0:
            return 1.0 / (1.0 + math.exp(-z))
        e = math.exp(z)
        return e / (1.0 + e)

    def to_json(self) -> dict[str, Any]:
        return {
            "cues": list(CUES),
            "weights": [round(float(w), 6) for w in self.weights],
            "bias": round(self.bias, 6),
            "about": self.about,
        }


def parse_follow_up_model(raw: Any) -> FollowUpModel:
    if not isinstance(raw, dict):
        raise FollowUpModelError("the follow-up model is not a JSON object")
    weights = raw.get("weights")
    bias = raw.get("bias")
    if not isinstance(weights, list) or not weights:
        raise FollowUpModelError("'weights' must be a non-empty list of numbers")
    if not all(isinstance(w, int | float) and not isinstance(w, bool) for w in weights):
        raise FollowUpModelError("'weights' must be a non-empty list of numbers")
    if not isinstance(bias, int | float) or isinstance(bias, bool):
        raise FollowUpModelError("'bias' must be a number")
    vector = np.asarray(weights, dtype=np.float32)
    if not np.all(np.isfinite(vector)) or not math.isfinite(bias):
        raise FollowUpModelError("the follow-up model's weights must be finite")
    if vector.shape[0] <= len(CUES) or raw.get("cues") != list(CUES):
        raise FollowUpModelError(f"the weights must cover an embedding and the cues {CUES}")
    about = raw.get("about", {})
    return FollowUpModel(vector, float(bias), about if isinstance(about, dict) else {})


def load_follow_up_model(path: Path = MODEL_PATH) -> FollowUpModel:
    """The shipped detector (blocking; a few kilobytes)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise FollowUpModelError(f"{path}: {exc}") from None
    return parse_follow_up_model(raw)
