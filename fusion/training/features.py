"""Frozen all-MiniLM-L6-v2 embeddings of the training texts, cached under var/cache/ by the
texts' digest (the encoder is fixed), shared by every trainer."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from tqdm import tqdm  # type: ignore[import-untyped, unused-ignore]

from fusion.text_encoder import EMBEDDING_DIM, TextEncoder, TextEncoderConfig
from fusion.training.data import CACHE_DIR

__all__ = ["digest", "text_features"]

FloatArray = npt.NDArray[np.float32]


def digest(parts: Sequence[str]) -> str:
    """A cache key: 16 hex digits of the sha256 of `parts`, each ended by a NUL byte."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8") + b"\0")
    return h.hexdigest()[:16]


def text_features(
    texts: Sequence[str],
    device: torch.device,
    cache_dir: Path = CACHE_DIR,
    batch: int = 64,
    desc: str = "text embeddings",
) -> FloatArray:
    """MiniLM embeddings [N, 384], cached by the texts' digest (the encoder is fixed).

    Texts are encoded in length order so a batch pads to similar lengths (about twice as
    fast on long-tailed Reddit comments); mean pooling is masked, so order does not matter.
    """
    if not texts:
        return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
    path = cache_dir / f"minilm-{digest(texts)}.npy"
    if path.exists():
        cached: FloatArray = np.load(path).astype(np.float32)
        if cached.shape == (len(texts), EMBEDDING_DIM):
            return cached
    encoder = TextEncoder(device, TextEncoderConfig())
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.zeros((len(texts), EMBEDDING_DIM), dtype=np.float32)
    for start in tqdm(range(0, len(texts), batch), desc=desc, unit="batch"):
        rows = order[start : start + batch]
        out[rows] = encoder.encode([texts[i] for i in rows])
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npy")
    np.save(tmp, out)
    tmp.replace(path)
    return out
