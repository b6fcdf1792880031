"""The label sets the heads read and predict, and how they map onto the service emotions.

The service emotions are what the assistant acts on. The text head predicts GoEmotions' 28
labels and the speech head RAVDESS's 8; each distribution is summed onto the service
emotions through a 0/1 matrix (`mapping_matrix`) of the mappings below. The fusion model's
simulator (training/simulator.py) reads the same RAVDESS mapping (docs/understanding.md,
docs/fusion.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

__all__ = [
    "EKMAN",
    "GOEMOTIONS_TO_EKMAN",
    "GOEMOTIONS_TO_SERVICE",
    "OUT_OF_SCOPE",
    "RAVDESS",
    "RAVDESS_TO_SERVICE",
    "SERVICE_EMOTIONS",
    "mapping_matrix",
]

OUT_OF_SCOPE = "out_of_scope"

SERVICE_EMOTIONS: tuple[str, ...] = (
    "neutral",
    "satisfied",
    "confused",
    "anxious",
    "sad",
    "frustrated",
    "angry",
)


# GoEmotions' 28 labels -> service emotions. Positive labels all read as a customer who is
# content; curiosity and realization are the neutral information-seeking of a service chat;
# disappointment and disapproval are aimed at an outcome (frustrated), anger and disgust at
# the company (angry); embarrassment and remorse are the sad, self-directed ones.
GOEMOTIONS_TO_SERVICE: dict[str, str] = {
    "admiration": "satisfied",
    "amusement": "satisfied",
    "anger": "angry",
    "annoyance": "frustrated",
    "approval": "satisfied",
    "caring": "satisfied",
    "confusion": "confused",
    "curiosity": "neutral",
    "desire": "neutral",
    "disappointment": "frustrated",
    "disapproval": "frustrated",
    "disgust": "angry",
    "embarrassment": "sad",
    "excitement": "satisfied",
    "fear": "anxious",
    "gratitude": "satisfied",
    "grief": "sad",
    "joy": "satisfied",
    "love": "satisfied",
    "nervousness": "anxious",
    "optimism": "satisfied",
    "pride": "satisfied",
    "realization": "neutral",
    "relief": "satisfied",
    "remorse": "sad",
    "sadness": "sad",
    "surprise": "confused",
    "neutral": "neutral",
}


# GoEmotions' own Ekman grouping (the data set's ekman/ files), used for the Ekman-7 figures.
GOEMOTIONS_TO_EKMAN: dict[str, str] = {
    "admiration": "joy",
    "amusement": "joy",
    "anger": "anger",
    "annoyance": "anger",
    "approval": "joy",
    "caring": "joy",
    "confusion": "surprise",
    "curiosity": "surprise",
    "desire": "joy",
    "disappointment": "sadness",
    "disapproval": "anger",
    "disgust": "disgust",
    "embarrassment": "sadness",
    "excitement": "joy",
    "fear": "fear",
    "gratitude": "joy",
    "grief": "sadness",
    "joy": "joy",
    "love": "joy",
    "nervousness": "fear",
    "optimism": "joy",
    "pride": "joy",
    "realization": "surprise",
    "relief": "joy",
    "remorse": "sadness",
    "sadness": "sadness",
    "surprise": "surprise",
    "neutral": "neutral",
}


EKMAN: tuple[str, ...] = ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")


# RAVDESS's emotion codes 01..08 in code order: the speech head's classes, and the labels the
# speech encoder and the simulator read from the clips.
RAVDESS: tuple[str, ...] = (
    "neutral",
    "calm",
    "happy",
    "sad",
    "angry",
    "fearful",
    "disgust",
    "surprised",
)


# RAVDESS's 8 acted emotions -> service emotions. Calm is a quiet neutral; disgust in these
# recordings is contempt more than rage, the tone of a customer fed up with an outcome; the
# rising, questioning "surprised" delivery is the closest to a caller who does not follow.
RAVDESS_TO_SERVICE: dict[str, str] = {
    "neutral": "neutral",
    "calm": "neutral",
    "happy": "satisfied",
    "sad": "sad",
    "angry": "angry",
    "fearful": "anxious",
    "disgust": "frustrated",
    "surprised": "confused",
}


def mapping_matrix(
    source: Sequence[str], target: Sequence[str], mapping: Mapping[str, str]
) -> npt.NDArray[np.float32]:
    """[len(source), len(target)] 0/1 matrix: p_target = p_source @ M."""
    out = np.zeros((len(source), len(target)), dtype=np.float32)
    for i, name in enumerate(source):
        out[i, target.index(mapping[name])] = 1.0
    return out
