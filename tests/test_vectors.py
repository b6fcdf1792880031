"""Per-message vectors stacked for a batch: zeros where one is missing, refusals named."""

from __future__ import annotations

import numpy as np
import pytest

from fusion.vectors import stack_rows


def test_rows_keep_their_places_and_missing_ones_are_zero() -> None:
    a = np.array([1.0, 2.0, 3.0], dtype=np.float64)
    out = stack_rows([None, a, [4, 5, 6]], 3, "speech")
    assert out.dtype == np.float32
    assert out.tolist() == [[0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    assert stack_rows([], 3, "speech").shape == (0, 3)


def test_a_vector_of_another_length_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="speech vector has 2 values, expected 3"):
        stack_rows([[1.0, 2.0]], 3, "speech")
