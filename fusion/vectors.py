"""Per-message vectors, some of them missing, as one array for a batched forward."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["stack_rows"]


def stack_rows(
    vecs: Sequence[npt.ArrayLike | None], dim: int, name: str
) -> npt.NDArray[np.float32]:
    """[len(vecs), dim] float32: each vector as a row, zeros where a message has none.
    Raises ValueError, naming `name`, for a vector of another length."""
    complete = all(v is not None for v in vecs)
    # Every row is written when none is missing: no zero-fill to pay for.
    out = (
        np.empty((len(vecs), dim), np.float32)
        if complete
        else np.zeros((len(vecs), dim), np.float32)
    )
    for i, v in enumerate(vecs):
        if v is not None:
            row = np.asarray(v, dtype=np.float32).reshape(-1)
            if row.shape[0] != dim:
                raise ValueError(f"{name} vector has {row.shape[0]} values, expected {dim}")
            out[i] = row
    return out
