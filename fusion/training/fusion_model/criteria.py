"""The acceptance checks of the ablation and the figures they rest on, per fold and as
mean +- std over folds (points = percentage points)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fusion.model import MODALITIES, STRATEGIES

__all__ = ["METRICS", "criteria", "paired", "per_fold", "summary"]

METRICS = (
    ("intent_acc", "intent acc"),
    ("intent_acc_ambiguous", "intent acc (ambiguous)"),
    ("emotion_f1", "emotion macro-F1"),
    ("emotion_f1_ambiguous", "emotion macro-F1 (ambiguous)"),
)


PAIR_OF = {"text": "speech + behaviour", "speech": "text + behaviour", "behaviour": "text + speech"}


def summary(values: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0}


def _mean(results: dict[str, Any], variant: str, cond: str, metric: str) -> float:
    return float(results[variant]["conditions"][cond]["summary"][metric]["mean"])


def per_fold(results: dict[str, Any], variant: str, cond: str, metric: str) -> list[float]:
    return [float(f[metric]) for f in results[variant]["conditions"][cond]["per_fold"]]


def paired(a: list[float], b: list[float]) -> dict[str, Any]:
    """a - b in points, per fold (the folds share their test sessions) and mean +- std."""
    diffs = [100 * (x - y) for x, y in zip(a, b, strict=True)]
    return {"per_fold": diffs, **summary(diffs)}


def criteria(results: dict[str, Any], ship: str) -> dict[str, Any]:
    """The two acceptance checks, with the figures they rest on (points = percentage points).

    "Within 1 point" reads one-sided: the fused model with a modality hidden may be better
    than the model trained without it, but not more than 1 point worse (on the fold means).
    """
    singles = [f"{m} only" for m in MODALITIES]
    fused = [f"fusion: {s}" for s in STRATEGIES]
    metric = "intent_acc_ambiguous"
    best_single = max(singles, key=lambda v: _mean(results, v, "all", metric))
    best_fused = max(fused, key=lambda v: _mean(results, v, "all", metric))
    margin = paired(
        per_fold(results, best_fused, "all", metric),
        per_fold(results, best_single, "all", metric),
    )
    per_strategy = {
        v: paired(
            per_fold(results, v, "all", metric), per_fold(results, best_single, "all", metric)
        )
        for v in fused
    }
    missing = []
    for hidden, pair in PAIR_OF.items():
        pair_name = f"{pair} ({ship})"
        for key, _ in METRICS[::2]:
            gap = paired(
                per_fold(results, pair_name, "all", key),
                per_fold(results, f"fusion: {ship}", f"without {hidden}", key),
            )
            missing.append(
                {
                    "hidden": hidden,
                    "metric": key,
                    "fused_without": _mean(results, f"fusion: {ship}", f"without {hidden}", key),
                    "trained_on_rest": _mean(results, pair_name, "all", key),
                    "gap_points": gap,
                    "within_1_point": gap["mean"] <= 1.0,
                }
            )
    return {
        "ambiguous_margin": {
            "metric": metric,
            "best_fusion": best_fused,
            "best_single": best_single,
            "margin_points": margin,
            "at_least_5_points": margin["mean"] >= 5.0,
            "each_strategy_vs_best_single": per_strategy,
        },
        "missing_modality": missing,
        "missing_modality_all_within_1_point": all(m["within_1_point"] for m in missing),
    }
