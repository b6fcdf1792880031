"""Operators' label corrections reach the intent and emotion trainers (`--with-corrections`)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from assistant.app.training import export_corrections
from fusion.heads.labels import GOEMOTIONS_TO_SERVICE, OUT_OF_SCOPE
from fusion.training.corrections import (
    Correction,
    emotion_rows,
    intent_rows,
    read_corrections,
    write_corrections,
)
from profiles import OperatorStore, ProfileUpdate, Store

REPO = Path(__file__).resolve().parent.parent


def test_csv_round_trip_keeps_commas_quotes_and_newlines(tmp_path: Path) -> None:
    rows = [
        Correction("t1", "intent", "card_arrival", 'my card, the "new" one\nhas not come'),
        Correction("t2", "emotion", "angry", "this is ridiculous"),
    ]
    path = tmp_path / "c.csv"
    assert write_corrections(path, rows) == 2
    assert read_corrections(path) == rows


def test_a_csv_without_the_columns_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("text,intent\nhello,card_arrival\n")
    with pytest.raises(ValueError, match="missing columns field, label, turn_id"):
        read_corrections(path)


def test_intent_rows_index_intents_and_out_of_scope_and_skip_unknown_labels() -> None:
    intents = ("card_arrival", "lost_or_stolen_card")
    rows = [
        Correction("a", "intent", "lost_or_stolen_card", "I lost my card"),
        Correction("b", "emotion", "angry", "grr"),
        Correction("c", "intent", OUT_OF_SCOPE, "what's the weather"),
        Correction("d", "intent", "no_such_intent", "?"),
    ]
    texts, labels, unknown = intent_rows(rows, intents)
    assert texts == ("I lost my card", "what's the weather")
    assert labels.tolist() == [1, 2]
    assert unknown == ["no_such_intent"]


def test_emotion_rows_spread_over_the_goemotions_labels_of_the_service_emotion() -> None:
    names = ("anger", "annoyance", "disgust", "joy", "neutral")
    rows = [
        Correction("a", "emotion", "angry", "this is outrageous"),
        Correction("b", "emotion", "bored", "meh"),
        Correction("c", "intent", "card_arrival", "card?"),
    ]
    texts, targets, unknown = emotion_rows(rows, names, GOEMOTIONS_TO_SERVICE)
    assert texts == ("this is outrageous",)
    # anger and disgust map to "angry"; annoyance maps to "frustrated".
    np.testing.assert_allclose(targets, [[0.5, 0.0, 0.5, 0.0, 0.0]])
    assert unknown == ["bored"]


async def test_export_writes_the_latest_correction_of_each_label(
    db_url: str, tmp_path: Path
) -> None:
    store = Store.open(db_url)
    ops = OperatorStore(store)
    try:
        user = await store.upsert_user("default", "corrected")
        conv = await store.open_conversation(user.id, "chat")
        turn, _ = await store.add_user_turn(conv.id, user.id, "m1", "my card never came")
        await store.apply_profile(user.id, ProfileUpdate(np.ones(4, np.float32), "v1", "turn"))
        await ops.relabel_turn(turn.id, "op1", intent="card_delivery_estimate")
        await ops.relabel_turn(turn.id, "op1", intent="card_arrival", emotion="frustrated")
    finally:
        await store.close()
    path = tmp_path / "out" / "intent.csv"
    assert await export_corrections(db_url, path) == 2
    assert read_corrections(path) == [
        Correction(turn.id, "intent", "card_arrival", "my card never came"),
        Correction(turn.id, "emotion", "frustrated", "my card never came"),
    ]


def test_with_corrections_is_refused_for_trainers_that_take_no_labels(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "server.py"), "train", "fusion", "--with-corrections"],
        capture_output=True,
        text=True,
        env={**os.environ, "ASSISTANT_DB_URL": f"sqlite+aiosqlite:///{tmp_path / 'a.db'}"},
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert "applies to the intent and emotion trainers" in done.stderr


@pytest.mark.skipif(
    not os.environ.get("ASSISTANT_DATA_DIR"),
    reason="needs the public data sets: set ASSISTANT_DATA_DIR (.ci/run does)",
)
async def test_intent_trainer_trains_on_the_databases_corrections(
    sqlite_url: str, tmp_path: Path
) -> None:
    """A short intent training (small ensemble, few epochs, nothing published) counts the
    corrections it was given among its training rows."""
    store = Store.open(sqlite_url)
    ops = OperatorStore(store)
    try:
        user = await store.upsert_user("default", "trainee")
        conv = await store.open_conversation(user.id, "chat")
        labels = ["card_arrival", "lost_or_stolen_card", OUT_OF_SCOPE, "not_an_intent"]
        for i, label in enumerate(labels):
            turn, _ = await store.add_user_turn(conv.id, user.id, f"m{i}", f"utterance {i}")
            await ops.relabel_turn(turn.id, "op1", intent=label)
    finally:
        await store.close()
    out = tmp_path / "weights"
    out.mkdir()
    done = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            str(REPO / "server.py"),
            "train",
            "intent",
            "--with-corrections",
            "--no-publish",
            "--no-progress",
            "--members",
            "2",
            "--epochs",
            "1",
            "--film-epochs",
            "1",
            "--sessions",
            "200",
            "--out-dir",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "ASSISTANT_DB_URL": sqlite_url},
        timeout=1800,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "exported 4 label corrections" in done.stdout
    report = json.loads(done.stdout[done.stdout.rindex("\n{") :])
    assert report["data"]["corrections"] == {"used": 3, "skipped": ["not_an_intent"]}
    assert report["test"]["accuracy"] > 0.5
