"""Cosine similarity between profile vectors, for the neighbours of a profile.

A brute-force scan: profiles are scored a batch at a time and the best k kept across batches.
"""

from __future__ import annotations

import heapq
from typing import Any

import numpy as np

__all__ = ["Nearest", "score_blobs", "top_k_cosine"]


def top_k_cosine(
    target: np.ndarray[Any, Any], matrix: np.ndarray[Any, Any], k: int
) -> list[tuple[int, float]]:
    """The rows of `matrix` nearest `target` by cosine: [(row, similarity)], best first."""
    if matrix.shape[0] == 0 or k <= 0:
        return []
    norms = np.linalg.norm(matrix, axis=1)
    norms[norms == 0] = 1.0
    t_norm = float(np.linalg.norm(target)) or 1.0
    sims = (matrix @ target) / (norms * t_norm)
    k = min(k, sims.shape[0])
    idx = np.argpartition(-sims, k - 1)[:k]
    idx = idx[np.argsort(-sims[idx])]
    return [(int(i), float(sims[i])) for i in idx]


def score_blobs(
    target: np.ndarray[Any, Any], blobs: list[bytes], k: int
) -> list[tuple[int, float]]:
    """`top_k_cosine` over vectors as their column holds them (little-endian float32 bytes,
    each as long as `target`)."""
    dim = target.shape[0]
    matrix = np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(blobs), dim)
    return top_k_cosine(target.astype(np.float32), matrix.astype(np.float32), k)


class Nearest:
    """The k most similar ids seen so far, across batches."""

    def __init__(self, k: int) -> None:
        self._k = k
        self._best: list[tuple[float, str]] = []  # a min-heap of (similarity, id)

    def offer(self, similarity: float, item_id: str) -> None:
        item = (similarity, item_id)
        if len(self._best) < self._k:
            heapq.heappush(self._best, item)
        elif item > self._best[0]:
            heapq.heapreplace(self._best, item)

    def ranked(self) -> list[tuple[float, str]]:
        """[(similarity, id)], most similar first."""
        return sorted(self._best, reverse=True)
