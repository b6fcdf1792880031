"""Scores of the emotion experts' predictions on single-label rows: accuracy, macro-F1 and
calibration, the same for text, speech and their fusion."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from fusion.training.calibration import expected_calibration_error, macro_f1

__all__ = ["emotion_scores", "single_label"]

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


def single_label(labels: Sequence[tuple[int, ...]], matrix: FloatArray) -> IntArray:
    """Target class per row after mapping (matrix [source, target]), -1 when the mapped
    labels disagree (the row is left out of single-label figures)."""
    out = np.full(len(labels), -1, dtype=np.int64)
    for i, row in enumerate(labels):
        targets = {int(np.argmax(matrix[j])) for j in row}
        if len(targets) == 1:
            out[i] = targets.pop()
    return out


def emotion_scores(
    probs: FloatArray, decision: FloatArray, true: IntArray, n: int
) -> dict[str, Any]:
    keep = true >= 0
    pred = decision[keep].argmax(1)
    return {
        "rows": int(keep.sum()),
        "accuracy": float((pred == true[keep]).mean()),
        "macro_f1": macro_f1(true[keep], pred, n),
        "ece": expected_calibration_error(probs[keep], true[keep]),
    }
