"""The one place that decides where tensors live."""

from __future__ import annotations

import contextlib

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


def autocast(device: torch.device) -> contextlib.AbstractContextManager[object]:
    """bf16 autocast on CUDA (tensor cores, half the memory traffic); full precision on CPU,
    where bf16 matmuls are slower than fp32 on most CPUs."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy host tensors to CUDA through pinned memory so the copy can overlap compute."""
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
