"""Calibration and decision rules fitted on held-out predictions: the temperature of an
ensemble's logits, the expected calibration error that judges it, the prior correction of an
argmax for macro-F1, and the weights of the emotion head's product of experts."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from sklearn.metrics import f1_score  # type: ignore[import-untyped, unused-ignore]

__all__ = [
    "expected_calibration_error",
    "fit_product_of_experts",
    "fit_temperature",
    "macro_f1",
    "tune_prior_correction",
]

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


def expected_calibration_error(
    probs: npt.NDArray[np.floating[Any]], labels: npt.NDArray[np.integer[Any]], bins: int = 15
) -> float:
    """ECE of the top-1 confidence over equal-width bins (Guo et al. 2017)."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    total = 0.0
    for lo, hi in itertools.pairwise(edges):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            total += float(inside.mean()) * abs(float(correct[inside].mean() - conf[inside].mean()))
    return total


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, steps: int = 200) -> float:
    """The temperature minimising the NLL of `logits` [N, C] (or [M, N, C]: member average)."""
    log_t = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=steps)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        probs = torch.softmax(logits / log_t.exp(), dim=-1)
        if probs.dim() == 3:
            probs = probs.mean(dim=0)
        loss = torch.nn.functional.nll_loss(probs.clamp_min(1e-12).log(), labels)
        loss.backward()  # type: ignore[no-untyped-call, unused-ignore]
        return loss

    opt.step(closure)  # type: ignore[no-untyped-call, unused-ignore]
    return float(log_t.detach().exp())


def macro_f1(true: IntArray, pred: IntArray, n: int) -> float:
    return float(f1_score(true, pred, labels=list(range(n)), average="macro", zero_division=0))


def tune_prior_correction(
    log_p: FloatArray, true: IntArray, log_prior: FloatArray
) -> tuple[float, FloatArray]:
    """alpha in [0, 1] maximising macro-F1 of argmax(log p - alpha * log prior), and the
    resulting per-class offsets.

    Macro-F1 weighs rare classes like common ones; an argmax of calibrated probabilities
    favours the common ones. One shared exponent carries over from a development split to
    test better than a free offset per class (which overfits the rare classes' few rows).
    Fit on a development split only.
    """
    n = log_p.shape[1]
    alphas = np.linspace(0.0, 1.0, 21)
    scores = [macro_f1(true, (log_p - a * log_prior).argmax(1), n) for a in alphas]
    alpha = float(alphas[int(np.argmax(scores))])
    return alpha, (-alpha * log_prior).astype(np.float32)


def fit_product_of_experts(
    text_p: FloatArray, speech_p: FloatArray, y: IntArray, steps: int = 300
) -> tuple[FloatArray, FloatArray]:
    """Weights (text, speech) and a class bias for `w_t log p_t + w_s log p_s + b` by NLL."""
    lt = torch.from_numpy(np.log(np.clip(text_p, 1e-6, None)))
    ls = torch.from_numpy(np.log(np.clip(speech_p, 1e-6, None)))
    target = torch.from_numpy(y)
    w = torch.ones(2, requires_grad=True)
    b = torch.zeros(text_p.shape[1], requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=0.5, max_iter=steps)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(w[0] * lt + w[1] * ls + b, target)
        loss = loss + 1e-3 * (b**2).sum()
        loss.backward()  # type: ignore[no-untyped-call, unused-ignore]
        return loss

    opt.step(closure)  # type: ignore[no-untyped-call, unused-ignore]
    return w.detach().numpy().astype(np.float32), b.detach().numpy().astype(np.float32)
