"""The profile update: a documented, time-decayed exponential average of fused vectors.

    keep = retention * 0.5 ** (dt / half_life)
    p_t  = normalise(keep * p_{t-1} + (1 - keep) * z_t)
    c_t  = keep * c_{t-1} + (1 - keep) * g_t        (c: modality contributions, g: gates)

The profile stays a unit vector however long the history (bounded by construction), and the
contributions stay a distribution over modalities; a user who returns after a long absence
is described mostly by what they do now. A vector from another model version (another
dimension or space) is not mixed in: the profile restarts from the new observation.

The intent head's FiLM generator learned profiles of behaviour and speech alone (text left
out: the head reads the message itself), so `conditions_heads` passes a profile to the heads
only when some of it comes from those modalities. A profile made of words alone (a
conversation so far of text turns, such as "Hello") lies where the generator never saw a
vector, and there its modulation moved clear messages out of scope.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class ProfileUpdateConfig:
    retention: float = 0.8
    half_life_s: float = 7 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class ProfileState:
    vector: Vector
    contributions: dict[str, float]


def _keep(dt_s: float, config: ProfileUpdateConfig) -> float:
    return float(config.retention * 0.5 ** (max(dt_s, 0.0) / config.half_life_s))


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
        keep = _keep(dt_s, cfg)
        mixed = keep * previous + (1.0 - keep) * z
    norm = float(np.linalg.norm(mixed))
    if norm < 1e-12:
        return np.zeros_like(z)
    return (mixed / norm).astype(np.float32)


def update_state(
    previous: ProfileState | None,
    observation: Vector,
    gates: Mapping[str, float],
    dt_s: float,
    config: ProfileUpdateConfig | None = None,
) -> ProfileState:
    """The next profile state from one fused observation and the gates that formed it."""
    cfg = config or ProfileUpdateConfig()
    if previous is None or previous.vector.shape != np.shape(observation):
        vector = update_profile(None, observation, dt_s, cfg)
        return ProfileState(vector, {k: float(v) for k, v in gates.items()})
    vector = update_profile(previous.vector, observation, dt_s, cfg)
    keep = _keep(dt_s, cfg)
    names = set(previous.contributions) | set(gates)
    contributions = {
        name: keep * previous.contributions.get(name, 0.0) + (1.0 - keep) * gates.get(name, 0.0)
        for name in sorted(names)
    }
    return ProfileState(vector, contributions)


# The modalities the FiLM generator was trained on (fusion.training.heads.film).
CONDITIONING_MODALITIES: tuple[str, ...] = ("behaviour", "speech")


def conditions_heads(contributions: Mapping[str, float]) -> bool:
    """Whether a profile with these modality contributions may condition the intent head:
    some of it must come from behaviour or speech, what the generator learned."""
    return sum(float(contributions.get(m, 0.0)) for m in CONDITIONING_MODALITIES) > 0.0
