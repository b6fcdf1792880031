"""The async Store on both backends: users, conversations, turns, events, profiles, errors."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import numpy as np
import pytest

from profiles import (
    ConversationRecord,
    EventRecord,
    NewEvent,
    NotFound,
    ProfileRecord,
    ProfileUpdate,
    SnapshotRecord,
    Store,
    StoredFrame,
    StoreError,
    StoreUnavailable,
    TurnLabels,
    TurnRecord,
    UserRecord,
)
from profiles.models import Base
from profiles.records import Vector

UNREACHABLE_PG = "postgresql+asyncpg://postgres@127.0.0.1:1/x"
T0 = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def _vector(seed: int, dim: int = 384) -> Vector:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal(dim).astype(np.float32)
    # Values whose bits a lossy round trip (float64 text, rounding) would change.
    v[:6] = np.array(
        [
            -0.0,
            np.finfo(np.float32).tiny,
            np.finfo(np.float32).max,
            np.float32(1e-45),  # smallest subnormal
            np.float32(1) / np.float32(3),
            np.nextafter(np.float32(1), np.float32(2)),
        ],
        dtype=np.float32,
    )
    return v


def _update(seed: int, **kw: Any) -> ProfileUpdate:
    fields: dict[str, Any] = {
        "vector": _vector(seed),
        "model_version": "fusion-v1",
        "reason": "turn",
        "modality_contributions": {"text": 0.75, "behaviour": 0.25},
        "turns": 1,
        "events": 0,
    }
    fields.update(kw)
    return ProfileUpdate(**fields)


def _event(client_id: str, name: str = "click", minutes: int = 0, **props: Any) -> NewEvent:
    return NewEvent(
        client_id=client_id,
        name=name,
        occurred_at=T0 + timedelta(minutes=minutes),
        props=dict(props),
    )


def _assert_aware(*values: datetime | None) -> None:
    for value in values:
        assert value is not None
        assert value.tzinfo is not None
        assert value.utcoffset() == timedelta(0)


def _assert_plain_frozen(record: object) -> None:
    assert dataclasses.is_dataclass(record) and not isinstance(record, type)
    assert not isinstance(record, Base)
    first = dataclasses.fields(record)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(record, first, getattr(record, first))


async def _user_and_conversation(store: Store, ext: str = "u1") -> tuple[str, str]:
    user = await store.upsert_user("acme", ext)
    conv = await store.open_conversation(user.id, "chat")
    return user.id, conv.id


# connectivity


async def test_ping_and_backend(store: Store, db_url: str) -> None:
    assert await store.ping() is True
    assert store.backend == ("postgresql" if db_url.startswith("postgresql") else "sqlite")


# users


async def test_upsert_user_idempotent_per_tenant(store: Store) -> None:
    first = await store.upsert_user("acme", "ext-1", name="Ann", locale="en-GB")
    assert isinstance(first, UserRecord)
    assert (first.tenant, first.external_id, first.name, first.locale) == (
        "acme",
        "ext-1",
        "Ann",
        "en-GB",
    )
    assert len(first.id) == 32 and int(first.id, 16) >= 0
    _assert_aware(first.created_at, first.last_seen_at)

    again = await store.upsert_user("acme", "ext-1")
    assert again.id == first.id
    assert again.created_at == first.created_at
    assert again.last_seen_at >= first.last_seen_at
    # None leaves name and locale as they were.
    assert (again.name, again.locale) == ("Ann", "en-GB")

    renamed = await store.upsert_user("acme", "ext-1", name="Anne", locale="fr-FR")
    assert renamed.id == first.id
    assert (renamed.name, renamed.locale) == ("Anne", "fr-FR")
    assert await store.get_user(first.id) == renamed

    other_tenant = await store.upsert_user("globex", "ext-1")
    other_user = await store.upsert_user("acme", "ext-2")
    assert len({first.id, other_tenant.id, other_user.id}) == 3
    assert other_tenant.tenant == "globex" and other_tenant.name is None


async def test_get_user_unknown(store: Store) -> None:
    assert await store.get_user("0" * 32) is None


async def test_concurrent_upsert_same_user(store: Store) -> None:
    users = await asyncio.gather(*(store.upsert_user("acme", "racer") for _ in range(10)))
    assert len({u.id for u in users}) == 1


# records


async def test_records_are_frozen_dataclasses(store: Store) -> None:
    user_id, conv_id = await _user_and_conversation(store)
    user = await store.get_user(user_id)
    conv = await store.get_conversation(conv_id)
    turn, _ = await store.add_user_turn(conv_id, user_id, "c1", "hello")
    finished = await store.finish_turn(
        turn.id, labels=TurnLabels(), reply_text="hi", latency_ms=1.0, profile=_update(1)
    )
    reply = finished.reply
    await store.add_events(user_id, conv_id, [_event("e1")])
    profile = await store.get_profile(user_id)
    snapshots = await store.list_snapshots(user_id)
    events = await store.list_events(user_id)

    records: list[tuple[object, type]] = [
        (user, UserRecord),
        (conv, ConversationRecord),
        (turn, TurnRecord),
        (reply, TurnRecord),
        (profile, ProfileRecord),
        (snapshots[0], SnapshotRecord),
        (events[0], EventRecord),
    ]
    for record, kind in records:
        assert type(record) is kind
        _assert_plain_frozen(record)


# conversations


async def test_conversation_lifecycle(store: Store) -> None:
    user = await store.upsert_user("acme", "u1")
    conv = await store.open_conversation(user.id, "voice")
    assert (conv.user_id, conv.channel, conv.status, conv.ended_at) == (
        user.id,
        "voice",
        "bot",
        None,
    )
    _assert_aware(conv.started_at)
    assert await store.get_conversation(conv.id) == conv

    taken = await store.set_conversation_status(conv.id, "operator")
    assert (taken.id, taken.status, taken.ended_at) == (conv.id, "operator", None)
    assert await store.get_conversation(conv.id) == taken

    closed = await store.set_conversation_status(conv.id, "closed")
    assert closed.status == "closed"
    _assert_aware(closed.ended_at)
    assert closed.ended_at is not None and closed.ended_at >= conv.started_at
    # Closing again keeps the first end time.
    again = await store.set_conversation_status(conv.id, "closed")
    assert again.ended_at == closed.ended_at
    assert await store.get_conversation(conv.id) == again

    second = await store.open_conversation(user.id, "chat")
    assert second.id != conv.id and second.channel == "chat"


async def test_unknown_conversation(store: Store) -> None:
    assert await store.get_conversation("f" * 32) is None
    with pytest.raises(NotFound):
        await store.set_conversation_status("f" * 32, "closed")
    assert await store.list_turns("f" * 32) == []


# turns


async def test_add_user_turn_idempotent_on_client_id(store: Store) -> None:
    user_id, conv_id = await _user_and_conversation(store)
    turn, created = await store.add_user_turn(conv_id, user_id, "client-1", "hello there")
    assert created is True
    assert (turn.conversation_id, turn.user_id, turn.role, turn.client_id, turn.text) == (
        conv_id,
        user_id,
        "user",
        "client-1",
        "hello there",
    )
    assert (turn.intent, turn.emotion, turn.latency_ms) == (None, None, None)
    _assert_aware(turn.created_at)

    again, created_again = await store.add_user_turn(conv_id, user_id, "client-1", "resent")
    assert created_again is False
    assert again == turn  # the stored turn, not the resent text
    assert await store.list_turns(conv_id) == [turn]

    # The client id is unique per conversation only.
    other_conv = await store.open_conversation(user_id, "chat")
    elsewhere, created_elsewhere = await store.add_user_turn(
        other_conv.id, user_id, "client-1", "hello there"
    )
    assert created_elsewhere is True and elsewhere.id != turn.id


async def test_concurrent_add_user_turn_same_client_id(store: Store) -> None:
    user_id, conv_id = await _user_and_conversation(store)
    results = await asyncio.gather(
        *(store.add_user_turn(conv_id, user_id, "dup", f"try {i}") for i in range(10))
    )
    assert sum(created for _, created in results) == 1
    assert len({t.id for t, _ in results}) == 1
    assert len(await store.list_turns(conv_id)) == 1


async def test_finish_turn_writes_everything(store: Store) -> None:
    user_id, conv_id = await _user_and_conversation(store)
    assert await store.get_profile(user_id) is None
    assert await store.list_snapshots(user_id) == []

    turn, _ = await store.add_user_turn(conv_id, user_id, "c1", "where is my order?")
    labels = TurnLabels(
        intent="order_status",
        intent_confidence=0.875,
        emotion="neutral",
        emotion_scores={"neutral": 0.5, "angry": 0.25, "happy": 0.25},
    )
    first_update = _update(1, turns=1, events=2)
    finished = await store.finish_turn(
        turn.id,
        labels=labels,
        reply_text="It ships tomorrow.",
        latency_ms=123.5,
        profile=first_update,
    )
    reply = finished.reply
    assert (reply.role, reply.conversation_id, reply.user_id, reply.client_id) == (
        "assistant",
        conv_id,
        user_id,
        None,
    )
    assert (reply.text, reply.latency_ms) == ("It ships tomorrow.", 123.5)
    assert reply.id != turn.id

    stored_user, stored_reply = await store.list_turns(conv_id)
    assert stored_reply == reply
    assert stored_user.id == turn.id
    assert (
        stored_user.intent,
        stored_user.intent_confidence,
        stored_user.emotion,
        stored_user.emotion_scores,
    ) == ("order_status", 0.875, "neutral", {"neutral": 0.5, "angry": 0.25, "happy": 0.25})

    profile = await store.get_profile(user_id)
    assert profile is not None
    assert profile.user_id == user_id
    assert profile.vector.dtype == np.float32
    assert profile.vector.shape == first_update.vector.shape
    assert profile.vector.tobytes() == first_update.vector.tobytes()
    assert (profile.model_version, profile.turn_count, profile.event_count) == ("fusion-v1", 1, 2)
    assert profile.modality_contributions == {"text": 0.75, "behaviour": 0.25}
    _assert_aware(profile.updated_at)

    (snap,) = await store.list_snapshots(user_id)
    assert (snap.user_id, snap.turn_id, snap.reason, snap.model_version) == (
        user_id,
        turn.id,
        "turn",
        "fusion-v1",
    )
    assert snap.vector.dtype == np.float32
    assert snap.vector.tobytes() == first_update.vector.tobytes()

    # A second turn moves the counters on and appends a snapshot.
    turn2, _ = await store.add_user_turn(conv_id, user_id, "c2", "thanks")
    second_update = _update(2, turns=1, events=3, model_version="fusion-v2", reason="decay")
    await store.finish_turn(
        turn2.id,
        labels=TurnLabels(intent="thanks"),
        reply_text="You're welcome.",
        latency_ms=50.0,
        profile=second_update,
    )
    profile2 = await store.get_profile(user_id)
    assert profile2 is not None
    assert (profile2.turn_count, profile2.event_count, profile2.model_version) == (
        2,
        5,
        "fusion-v2",
    )
    assert profile2.vector.tobytes() == second_update.vector.tobytes()
    assert profile2.updated_at >= profile.updated_at

    snaps = await store.list_snapshots(user_id)
    assert [s.turn_id for s in snaps] == [turn.id, turn2.id]
    assert [s.reason for s in snaps] == ["turn", "decay"]
    assert snaps[0].id < snaps[1].id
    assert snaps[0].created_at <= snaps[1].created_at
    assert snaps[0].vector.tobytes() == first_update.vector.tobytes()
    assert snaps[1].vector.tobytes() == second_update.vector.tobytes()


async def test_profile_vector_is_a_writable_copy(store: Store) -> None:
    user_id, conv_id = await _user_and_conversation(store)
    turn, _ = await store.add_user_turn(conv_id, user_id, "c1", "hi")
    wide = np.linspace(-1.0, 1.0, 16, dtype=np.float64)
    update = ProfileUpdate(vector=wide.astype(np.float32), model_version="m", reason="turn")
    await store.finish_turn(
        turn.id, labels=TurnLabels(), reply_text="ok", latency_ms=1.0, profile=update
    )
    profile = await store.get_profile(user_id)
    assert profile is not None
    assert profile.vector.dtype == np.float32
    np.testing.assert_array_equal(profile.vector, wide.astype(np.float32))
    # The returned array is the caller's to use: writable and detached from the store.
    profile.vector[0] = 42.0
    again = await store.get_profile(user_id)
    assert again is not None and again.vector[0] == np.float32(-1.0)


async def test_finish_turn_without_profile(store: Store) -> None:
    user_id, conv_id = await _user_and_conversation(store)
    turn, _ = await store.add_user_turn(conv_id, user_id, "c1", "hi")
    finished = await store.finish_turn(
        turn.id, labels=TurnLabels(intent="greet"), reply_text="hello", latency_ms=2.0, profile=None
    )
    reply = finished.reply
    assert [t.id for t in await store.list_turns(conv_id)] == [turn.id, reply.id]
    assert await store.get_profile(user_id) is None
    assert await store.list_snapshots(user_id) == []


async def test_finish_turn_unknown_turn(store: Store) -> None:
    user_id, _ = await _user_and_conversation(store)
    with pytest.raises(NotFound):
        await store.finish_turn(
            "0" * 32, labels=TurnLabels(), reply_text="x", latency_ms=1.0, profile=_update(1)
        )
    assert await store.get_profile(user_id) is None


async def test_finish_turn_is_one_transaction(store: Store) -> None:
    user_id, conv_id = await _user_and_conversation(store)
    turn, _ = await store.add_user_turn(conv_id, user_id, "c1", "hi")
    # Not JSON-serialisable: the profile part fails at flush, after the labels and the reply
    # were staged, so nothing of the turn may be left behind.
    broken = _update(1, modality_contributions={"text": object()})
    try:
        await store.finish_turn(
            turn.id,
            labels=TurnLabels(intent="greet"),
            reply_text="hello",
            latency_ms=1.0,
            profile=broken,
        )
    except Exception as exc:
        # SQLAlchemy wraps the serialisation error; the root cause must be the TypeError.
        assert isinstance(exc, TypeError) or isinstance(exc.__cause__, TypeError), repr(exc)
    else:  # pragma: no cover
        pytest.fail("finish_turn stored a profile it cannot serialise")
    assert await store.list_turns(conv_id) == [turn]
    assert await store.get_profile(user_id) is None
    assert await store.list_snapshots(user_id) == []


async def test_list_turns_ordering(store: Store) -> None:
    user_id, conv_id = await _user_and_conversation(store)
    expected: list[tuple[str, str]] = []
    for i in range(3):
        turn, _ = await store.add_user_turn(conv_id, user_id, f"c{i}", f"question {i}")
        finished = await store.finish_turn(
            turn.id, labels=TurnLabels(), reply_text=f"answer {i}", latency_ms=1.0, profile=None
        )
        reply = finished.reply
        expected += [(turn.id, "user"), (reply.id, "assistant")]
    last, _ = await store.add_user_turn(conv_id, user_id, "c3", "question 3")
    expected.append((last.id, "user"))

    turns = await store.list_turns(conv_id)
    assert [(t.id, t.role) for t in turns] == expected
    assert [t.text for t in turns] == [
        "question 0",
        "answer 0",
        "question 1",
        "answer 1",
        "question 2",
        "answer 2",
        "question 3",
    ]
    stamps = [t.created_at for t in turns]
    assert stamps == sorted(stamps)

    # Turns of another conversation do not leak in.
    other = await store.open_conversation(user_id, "chat")
    await store.add_user_turn(other.id, user_id, "c0", "elsewhere")
    assert [t.id for t in await store.list_turns(conv_id)] == [i for i, _ in expected]


# behaviour events


async def test_add_events_idempotent_on_client_id(store: Store) -> None:
    user_id, conv_id = await _user_and_conversation(store)
    assert await store.add_events(user_id, conv_id, []) == 0

    batch = [
        _event("e1", "view", 0, page="/home"),
        _event("e2", "click", 1, target="buy", n=2),
        _event("e3", "scroll", 2, depth=0.5),
    ]
    assert await store.add_events(user_id, conv_id, batch) == 3
    assert await store.add_events(user_id, conv_id, batch) == 0
    # Two old ids and one new: only the new one counts.
    assert (
        await store.add_events(user_id, conv_id, [batch[0], _event("e4", "leave", 3), batch[2]])
        == 1
    )
    # The same id twice in one call is one row.
    assert (
        await store.add_events(user_id, None, [_event("e5", minutes=4), _event("e5", minutes=5)])
        == 1
    )

    events = await store.list_events(user_id)
    assert [e.client_id for e in events] == ["e5", "e4", "e3", "e2", "e1"]
    assert len({e.id for e in events}) == 5
    by_id = {e.client_id: e for e in events}
    assert by_id["e2"].props == {"target": "buy", "n": 2}
    assert by_id["e2"].name == "click"
    assert by_id["e2"].occurred_at == T0 + timedelta(minutes=1)
    assert by_id["e1"].conversation_id == conv_id
    assert by_id["e5"].conversation_id is None
    assert by_id["e5"].occurred_at == T0 + timedelta(minutes=4)  # the first one stored wins
    for e in events:
        assert e.user_id == user_id
        _assert_aware(e.occurred_at, e.received_at)


async def test_event_client_ids_are_per_user(store: Store) -> None:
    a, conv_a = await _user_and_conversation(store, "a")
    b, conv_b = await _user_and_conversation(store, "b")
    assert await store.add_events(a, conv_a, [_event("same")]) == 1
    assert await store.add_events(b, conv_b, [_event("same")]) == 1
    assert [e.user_id for e in await store.list_events(a)] == [a]
    assert [e.user_id for e in await store.list_events(b)] == [b]


async def test_list_events_order_limit_and_offsets(store: Store) -> None:
    user_id, _ = await _user_and_conversation(store)
    plus_two = timezone(timedelta(hours=2))
    events = [
        NewEvent("late", "x", datetime(2026, 1, 1, 12, 0, tzinfo=UTC)),
        # 11:30 UTC written with a +02:00 offset: it sorts by the instant, not the wall clock.
        NewEvent("offset", "x", datetime(2026, 1, 1, 13, 30, tzinfo=plus_two)),
        NewEvent("early", "x", datetime(2026, 1, 1, 9, 0, tzinfo=UTC)),
    ]
    assert await store.add_events(user_id, None, events) == 3
    listed = await store.list_events(user_id)
    assert [e.client_id for e in listed] == ["late", "offset", "early"]
    assert listed[1].occurred_at == datetime(2026, 1, 1, 11, 30, tzinfo=UTC)
    assert [e.client_id for e in await store.list_events(user_id, limit=2)] == ["late", "offset"]
    assert await store.list_events("0" * 32) == []


async def test_concurrent_add_events_no_duplicates(store: Store) -> None:
    user_id, conv_id = await _user_and_conversation(store)
    batch = [_event(f"evt-{i}", minutes=i, i=i) for i in range(5)]
    counts = await asyncio.gather(*(store.add_events(user_id, conv_id, batch) for _ in range(20)))
    assert sum(counts) == 5
    assert all(c in range(6) for c in counts)
    events = await store.list_events(user_id, limit=1000)
    assert sorted(e.client_id for e in events) == [f"evt-{i}" for i in range(5)]
    assert len({e.id for e in events}) == 5


# profiles


async def test_profile_unknown_user(store: Store) -> None:
    assert await store.get_profile("0" * 32) is None
    assert await store.list_snapshots("0" * 32) == []
    user = await store.upsert_user("acme", "fresh")
    assert await store.get_profile(user.id) is None


# errors


async def test_add_user_turn_unknown_conversation_raises_store_error(store: Store) -> None:
    user = await store.upsert_user("acme", "u1")
    with pytest.raises(StoreError):
        await store.add_user_turn("f" * 32, user.id, "c1", "hi")


async def test_unreachable_postgresql() -> None:
    store = Store.open(UNREACHABLE_PG)  # opening is lazy: no connection yet
    try:
        assert store.backend == "postgresql"
        assert await store.ping() is False
        with pytest.raises(StoreUnavailable):
            await store.upsert_user("acme", "u1")
        with pytest.raises(StoreUnavailable):
            await store.get_user("0" * 32)
        with pytest.raises(StoreUnavailable):
            await store.get_conversation("0" * 32)
        with pytest.raises(StoreUnavailable):
            await store.add_events("0" * 32, None, [_event("e1")])
        with pytest.raises(StoreUnavailable):
            await store.get_profile("0" * 32)
        # The error is the store's, with the driver's cause chained for logs.
        try:
            await store.list_turns("0" * 32)
        except StoreUnavailable as exc:
            assert isinstance(exc, StoreError)
            assert exc.__cause__ is not None
        else:  # pragma: no cover
            pytest.fail("list_turns on an unreachable database did not raise")
    finally:
        await store.close()


async def test_unknown_user_is_not_found_not_a_driver_error(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.open_conversation("0" * 32, "chat")
    event = NewEvent(client_id="e1", name="page_view", occurred_at=datetime.now(UTC), props={})
    with pytest.raises(NotFound):
        await store.add_events("0" * 32, None, [event])


async def test_concurrent_writes_commit_apart_from_a_failing_one(store: Store) -> None:
    """Writes that arrive together may share a transaction (group commit on SQLite): one
    that fails must fail alone, and every other must be stored."""
    user_id, conv_id = await _user_and_conversation(store)
    first, _ = await store.add_user_turn(conv_id, user_id, "m-0", "first")
    outcomes = await asyncio.gather(
        *(store.add_user_turn(conv_id, user_id, f"m-{i}", f"message {i}") for i in range(1, 9)),
        store.add_user_turn(conv_id, user_id, "m-0", "the first one again"),
        store.add_user_turn("no-such-conversation", user_id, "x", "lost"),
        store.finish_turn(
            "no-such-turn",
            labels=TurnLabels(intent="card_arrival"),
            reply_text="-",
            latency_ms=1.0,
            profile=_update(3, turns=1),
        ),
        store.append_frames([StoredFrame(conv_id, seq, f"frame {seq}") for seq in (1, 2)]),
        return_exceptions=True,
    )
    created = outcomes[:8]
    assert all(isinstance(o, tuple) and o[1] for o in created)
    again = outcomes[8]
    assert isinstance(again, tuple) and again == (first, False)
    assert isinstance(outcomes[9], NotFound)
    assert isinstance(outcomes[10], NotFound)
    assert outcomes[11] is None
    turns = await store.list_turns(conv_id)
    assert sorted(t.client_id or "" for t in turns) == [f"m-{i}" for i in range(9)]
    assert [f.body for f in await store.list_frames(conv_id, limit=10)] == ["frame 1", "frame 2"]
    # The failed finish_turn wrote nothing: no reply, no profile.
    assert await store.get_profile(user_id) is None
