"""`assistant train KIND ...`: the training commands, each living beside its models.

The trainers pull in scikit-learn and data loaders the server never needs, so they are
imported only when asked for. `--with-corrections` (intent and emotion) exports the
operators' label corrections from the server's database to a CSV the trainer reads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from fusion.training.corrections import Correction, write_corrections
from profiles import OperatorStore, Store

TRAINERS = {
    "fusion": "the fusion model: 5-fold CV ablation on the simulated benchmark, then weights",
    "speech": "the speech encoder on RAVDESS, split by actor",
    "intent": "the intent head (Banking77 + CLINC150 out-of-scope), profile-conditioned; "
    "--with-corrections adds operators' relabels",
    "emotion": "the emotion head (GoEmotions text, RAVDESS speech); "
    "--with-corrections adds operators' relabels",
    "follow-ups": "the dialogue's follow-up detector and the policy's thresholds (Banking77 "
    "train, CLINC150); --write replaces the shipped detector",
}
WITH_CORRECTIONS = "--with-corrections"
CORRECTIONS_DIR = Path("var") / "corrections"


async def export_corrections(db_url: str, path: Path) -> int:
    """Write the latest correction of every (turn, label) in the database to `path`."""
    store = Store.open(db_url)
    try:
        records = await OperatorStore(store).list_label_corrections(latest_only=True)
    finally:
        await store.close()
    rows = (Correction(r.turn_id, r.field, r.new_value, r.text) for r in records)
    return write_corrections(path, rows)


def train(kind: str, argv: Sequence[str], *, db_url: str | None = None) -> int:
    """Run one trainer with its own command-line arguments; returns its exit status."""
    args = list(argv)
    if WITH_CORRECTIONS in args:
        if kind not in ("intent", "emotion"):
            raise ValueError(f"{WITH_CORRECTIONS} applies to the intent and emotion trainers")
        if db_url is None:
            raise ValueError(f"{WITH_CORRECTIONS} needs the database URL (ASSISTANT_DB_URL)")
        args.remove(WITH_CORRECTIONS)
        path = CORRECTIONS_DIR / f"{kind}.csv"
        count = asyncio.run(export_corrections(db_url, path))
        print(f"exported {count} label corrections to {path}")
        args += ["--corrections", str(path)]
    if kind == "fusion":
        from fusion.training.fusion_model import main as fusion_main

        return fusion_main(args)
    if kind == "speech":
        from fusion.training.speech_encoder import main as speech_main

        return speech_main(args)
    if kind in ("intent", "emotion"):
        from fusion.training.heads import main as understanding_main

        return understanding_main([kind, *args])
    if kind == "follow-ups":
        from assistant.app.follow_up_training import main as follow_up_main

        return follow_up_main(args)
    raise ValueError(f"unknown trainer {kind!r}; choose from {', '.join(TRAINERS)}")
