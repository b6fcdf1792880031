"""Process-wide settings the server applies once it is ready."""

from __future__ import annotations

import numpy as np
import torch
from threadpoolctl import (  # type: ignore[import-untyped, unused-ignore]
    threadpool_info,
    threadpool_limits,
)

from assistant import single_threaded_blas


def _blas_threads() -> list[int]:
    return [int(pool["num_threads"]) for pool in threadpool_info() if pool["user_api"] == "blas"]


def test_numpys_blas_gets_one_thread_and_torchs_threads_stay() -> None:
    assert _blas_threads(), "numpy's BLAS is loaded"
    torch_threads = torch.get_num_threads()
    # The limiter restores what it found on exit: the rest of the run keeps its threads.
    with threadpool_limits(limits=None):
        single_threaded_blas()
        assert set(_blas_threads()) == {1}
        assert torch.get_num_threads() == torch_threads
        a = np.arange(12, dtype=np.float32).reshape(3, 4)
        assert (a @ np.ones(4, dtype=np.float32)).tolist() == [6.0, 22.0, 38.0]
