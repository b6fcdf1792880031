"""The time-decayed profile update: bounded, decaying, restarting across model versions."""

from __future__ import annotations

import numpy as np

from fusion import ProfileState, ProfileUpdateConfig, update_state


def _gates(rng: np.random.Generator) -> dict[str, float]:
    raw = rng.dirichlet([1.0, 1.0, 1.0])
    return {"text": float(raw[0]), "speech": float(raw[1]), "behaviour": float(raw[2])}


def test_ten_thousand_updates_stay_bounded() -> None:
    rng = np.random.default_rng(7)
    state: ProfileState | None = None
    for _ in range(10_000):
        z = (rng.standard_normal(128) * rng.uniform(0.01, 100.0)).astype(np.float32)
        state = update_state(state, z, _gates(rng), dt_s=float(rng.exponential(3600.0)))
    assert state is not None
    assert state.vector.dtype == np.float32 and np.isfinite(state.vector).all()
    assert abs(float(np.linalg.norm(state.vector)) - 1.0) < 1e-4
    shares = np.array(list(state.contributions.values()))
    assert (shares >= 0).all() and (shares <= 1).all()
    assert abs(shares.sum() - 1.0) < 1e-6


def test_long_absence_weighs_the_new_observation_more() -> None:
    config = ProfileUpdateConfig(retention=0.8, half_life_s=3600.0)
    old = ProfileState(np.eye(4, dtype=np.float32)[0], {"text": 1.0})
    new = np.eye(4, dtype=np.float32)[1]
    soon = update_state(old, new, {"behaviour": 1.0}, dt_s=60.0, config=config)
    later = update_state(old, new, {"behaviour": 1.0}, dt_s=86_400.0, config=config)
    assert later.vector[1] > soon.vector[1]
    assert later.contributions["behaviour"] > soon.contributions["behaviour"]
    assert soon.contributions["text"] > 0.5 > later.contributions["text"]


def test_other_dimension_restarts_from_the_observation() -> None:
    old = ProfileState(np.ones(384, dtype=np.float32) / np.sqrt(384), {"text": 1.0})
    z = np.arange(1, 129, dtype=np.float32)
    state = update_state(old, z, {"text": 0.25, "behaviour": 0.75}, dt_s=10.0)
    assert state.vector.shape == (128,)
    np.testing.assert_allclose(state.vector, z / np.linalg.norm(z), rtol=1e-6)
    assert state.contributions == {"text": 0.25, "behaviour": 0.75}
