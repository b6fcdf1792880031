"""Re-fusing stored profiles: the replay plan, and a real run over a real database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np

from assistant import Models
from assistant.app.re_fusion import re_fuse_profiles, replay_plan
from profiles import EventRecord, NewEvent, Store, TurnRecord

T0 = datetime(2026, 1, 1, 12, tzinfo=UTC)


def _turn(i: int, minutes: float, text: str) -> TurnRecord:
    return TurnRecord(
        id=f"t{i}",
        conversation_id="c",
        user_id="u",
        role="user",
        client_id=f"m{i}",
        text=text,
        intent=None,
        intent_confidence=None,
        emotion=None,
        emotion_scores=None,
        latency_ms=None,
        created_at=T0 + timedelta(minutes=minutes),
        position=2 * i,
    )


def _event(i: int, minutes: float, name: str) -> EventRecord:
    at = T0 + timedelta(minutes=minutes)
    return EventRecord(i, "u", None, f"e{i}", name, {}, at, at)


def test_replay_plan_interleaves_behaviour_and_turns() -> None:
    turns = [_turn(1, 10, "where is my card"), _turn(2, 30, "thanks")]
    events = [
        _event(3, 35, "page_view"),
        _event(1, 1, "card_ordered"),
        _event(2, 5, "page_view"),
    ]
    plan = replay_plan(turns, events, max_events=32)
    assert [(s.text, [e.id for e in s.events]) for s in plan] == [
        (None, [1, 2]),
        ("where is my card", [1, 2]),
        ("thanks", [1, 2]),
        (None, [1, 2, 3]),
    ]
    assert [s.at for s in plan] == sorted(s.at for s in plan)
    assert len(replay_plan(turns, events, max_events=2)[-1].events) == 2
    assert replay_plan([], []) == []


async def _seed(store: Store) -> list[str]:
    users = []
    for n in range(3):
        user = await store.upsert_user("acme", f"cust-{n}")
        conversation = await store.open_conversation(user.id, "chat")
        await store.add_user_turn(conversation.id, user.id, "m1", f"my payment {n} failed")
        await store.add_events(
            user.id,
            conversation.id,
            [NewEvent("e1", "payment_failed", datetime.now(UTC), {"amount": 10 * n})],
        )
        users.append(user.id)
    await store.upsert_user("acme", "silent")  # no history: no profile to rebuild
    return users


async def test_re_fuse_rebuilds_every_profile_deterministically(
    db_url: str, models: Models
) -> None:
    store = Store.open(db_url)
    try:
        users = await _seed(store)
        pages: list[int] = []
        report = await re_fuse_profiles(store, models, page=2, progress=pages.append)
        assert (report.users, report.profiles, report.observations) == (4, 3, 6)
        assert sum(pages) == 4 and len(pages) == 2
        first = {}
        for user_id in users:
            profile = await store.get_profile(user_id)
            assert profile is not None and profile.model_version == models.model_version
            assert profile.vector.shape == (models.dim,)
            assert set(profile.modality_contributions) >= {"text", "behaviour"}
            assert profile.modality_contributions["behaviour"] > 0
            snapshots = await store.list_snapshots(user_id)
            assert [s.reason for s in snapshots] == ["refuse"]
            first[user_id] = profile.vector
        await re_fuse_profiles(store, models)
        for user_id in users:
            again = await store.get_profile(user_id)
            assert again is not None
            np.testing.assert_allclose(again.vector, first[user_id], atol=1e-6)
    finally:
        await store.close()
