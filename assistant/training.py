"""`assistant train KIND ...`: the training commands, each living beside its models.

The trainers pull in scikit-learn and data loaders the server never needs, so they are
imported only when asked for.
"""

from __future__ import annotations

from collections.abc import Sequence

TRAINERS = {
    "fusion": "the fusion model: 5-fold CV ablation on the simulated benchmark, then weights",
    "speech": "the speech encoder on RAVDESS, split by actor",
    "intent": "the intent head (Banking77 + CLINC150 out-of-scope), profile-conditioned",
    "emotion": "the emotion head (GoEmotions text, RAVDESS speech)",
}


def train(kind: str, argv: Sequence[str]) -> int:
    """Run one trainer with its own command-line arguments; returns its exit status."""
    if kind == "fusion":
        from fusion.training import main as fusion_main

        return fusion_main(list(argv))
    if kind == "speech":
        from fusion.train_speech import main as speech_main

        return speech_main(list(argv))
    if kind in ("intent", "emotion"):
        from fusion.train_understanding import main as understanding_main

        return understanding_main([kind, *argv])
    raise ValueError(f"unknown trainer {kind!r}; choose from {', '.join(TRAINERS)}")
