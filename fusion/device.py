"""The one place that decides where tensors live."""

from __future__ import annotations

import torch


def select_device(preference: str = "auto") -> torch.device:
    """CUDA when asked for, or under "auto" when present; else CPU. Asking for absent CUDA fails."""
    if preference == "cpu":
        return torch.device("cpu")
    if preference == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("ASSISTANT_DEVICE=cuda but no CUDA device is available")
        return torch.device("cuda")
    if preference != "auto":
        raise ValueError(f"unknown device preference {preference!r}")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
