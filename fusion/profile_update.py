"""The first profile update: a documented, time-decayed exponential average of turn vectors.

    keep = retention * 0.5 ** (dt / half_life)
    p_t  = normalise(keep * p_{t-1} + (1 - keep) * z_t)

The profile stays a unit vector however long the history (bounded by construction); a user
who returns after a long absence is described mostly by what they do now.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

MODEL_VERSION = "text-ema-1"

Vector = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class ProfileUpdateConfig:
    retention: float = 0.8
    half_life_s: float = 7 * 24 * 3600.0


def update_profile(
    previous: Vector | None,
    observation: Vector,
    dt_s: float,
    config: ProfileUpdateConfig | None = None,
) -> Vector:
    cfg = config or ProfileUpdateConfig()
    z = np.asarray(observation, dtype=np.float32)
    if previous is None or previous.shape != z.shape:
        mixed = z
    else:
        keep = cfg.retention * 0.5 ** (max(dt_s, 0.0) / cfg.half_life_s)
        mixed = keep * previous + (1.0 - keep) * z
    norm = float(np.linalg.norm(mixed))
    if norm < 1e-12:
        return np.zeros_like(z)
    return (mixed / norm).astype(np.float32)
