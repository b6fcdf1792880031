"""The turn path's writes as a group (one statement per kind of row for many turns), on both
backends: they write what the same turns write one at a time, and a bad one fails the group."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import Session

from profiles import NotFound, ProfileRecord, ProfileUpdate, Store, TurnLabels
from profiles.engine import create_engine
from profiles.models import User, utcnow
from profiles.transactions import run_together
from profiles.turn_writes import FinishTurn, InsertTurn

T = TypeVar("T")


async def _in_one_transaction(url: str, work: Callable[[Session], T]) -> T:
    """`work` in a transaction of its own, through the async driver as on PostgreSQL."""
    engine = create_engine(url)
    try:
        async with async_sessionmaker(engine)() as session, session.begin():
            return await session.run_sync(work)
    finally:
        await engine.dispose()


def _update(seed: int, turns: int = 1) -> ProfileUpdate:
    vector = np.random.default_rng(seed).standard_normal(64).astype(np.float32)
    return ProfileUpdate(vector, "fusion-v1", "turn", {"text": 1.0}, turns=turns)


async def _conversation(store: Store, external_id: str) -> tuple[str, str]:
    user = await store.upsert_user("acme", external_id)
    return user.id, (await store.open_conversation(user.id, "chat")).id


async def _user_labels(url: str, user_id: str) -> tuple[str | None, str | None]:
    def read(session: Session) -> tuple[str | None, str | None]:
        row = session.execute(
            select(User.current_emotion, User.recent_intent).where(User.id == user_id)
        ).one()
        return row[0], row[1]

    return await _in_one_transaction(url, read)


async def test_turns_finished_as_a_group_write_what_each_writes(store: Store, db_url: str) -> None:
    a, a_chat = await _conversation(store, "a")
    a_call = (await store.open_conversation(a, "voice")).id
    b, b_chat = await _conversation(store, "b")
    c, c_chat = await _conversation(store, "c")
    await store.apply_profile(b, _update(7, turns=0))  # b has a profile; a and c have none
    t1, _ = await store.add_user_turn(a_chat, a, "m1", "my card has not arrived")
    t2, _ = await store.add_user_turn(a_call, a, "m1", "how do I link it")
    t3, _ = await store.add_user_turn(b_chat, b, "m1", "top up please")
    t4, _ = await store.add_user_turn(c_chat, c, "m1", "refund?")
    seen: list[int | None] = []

    def grow(before: ProfileRecord | None) -> ProfileUpdate:
        seen.append(None if before is None else before.turn_count)
        return _update(len(seen))

    lock = store.backend == "postgresql"
    items = [
        FinishTurn(t1.id, TurnLabels("card_arrival", 0.9, "angry"), "On its way.", 1.0, grow, lock),
        FinishTurn(t2.id, TurnLabels("card_linking", 0.8), "Open the app.", 2.0, grow, lock),
        FinishTurn(t3.id, TurnLabels("top_up"), "Done.", 3.0, _update(3), lock),
        FinishTurn(t4.id, TurnLabels("refund"), "Sure.", 4.0, None, lock),
    ]
    finished = await _in_one_transaction(
        db_url, lambda session: FinishTurn.run_group(session, items)
    )

    # The second turn of a user sees the first one's profile, as if they ran one by one.
    assert seen == [None, 1]
    profile_a = await store.get_profile(a)
    assert profile_a is not None
    assert [f.profile.turn_count if f.profile else None for f in finished] == [1, 2, 1, None]
    assert profile_a.turn_count == 2
    assert profile_a.intent_histogram == {"card_arrival": 1, "card_linking": 1}
    assert profile_a.vector.tobytes() == _update(2).vector.tobytes()
    assert [s.turn_id for s in await store.list_snapshots(a)] == [t1.id, t2.id]
    profile_b = await store.get_profile(b)
    assert profile_b is not None
    assert (profile_b.turn_count, profile_b.intent_histogram) == (1, {"top_up": 1})
    assert len(await store.list_snapshots(b)) == 2  # apply_profile's and the turn's
    # No change and no profile: the intent has nowhere to be counted.
    assert await store.get_profile(c) is None
    assert await store.list_snapshots(c) == []

    for turn, chat, item, done in zip(
        (t1, t2, t3, t4), (a_chat, a_call, b_chat, c_chat), items, finished, strict=True
    ):
        user_turn, reply = await store.list_turns(chat)
        assert (user_turn.id, user_turn.intent, user_turn.emotion) == (
            turn.id,
            item.labels.intent,
            item.labels.emotion,
        )
        assert reply == done.reply
        assert reply.position == user_turn.position + 1
        assert (reply.role, reply.text, reply.latency_ms) == (
            "assistant",
            item.reply_text,
            item.latency_ms,
        )
    # The later turn's labels win; a label it lacks keeps the earlier one's.
    assert await _user_labels(db_url, a) == ("angry", "card_linking")
    assert await _user_labels(db_url, c) == (None, "refund")


async def test_an_unknown_turn_fails_its_group(store: Store, db_url: str) -> None:
    user_id, chat = await _conversation(store, "a")
    turn, _ = await store.add_user_turn(chat, user_id, "m1", "hello")
    items = [
        FinishTurn(turn.id, TurnLabels("greeting"), "Hi.", 1.0, _update(1), False),
        FinishTurn("0" * 32, TurnLabels("greeting"), "Hi.", 1.0, _update(2), False),
    ]
    with pytest.raises(NotFound):
        await _in_one_transaction(db_url, lambda session: FinishTurn.run_group(session, items))
    # Nothing of the group was written.
    assert [t.id for t in await store.list_turns(chat)] == [turn.id]
    assert await store.get_profile(user_id) is None


def _user_turn(conversation_id: str, user_id: str, client_id: str) -> InsertTurn:
    return InsertTurn(conversation_id, user_id, "user", "hi", utcnow(), client_id)


async def test_run_together_keeps_each_works_result_in_place(store: Store, db_url: str) -> None:
    user_id, chat = await _conversation(store, "a")
    works: Sequence[Callable[[Session], Any]] = [
        lambda session: "first",
        _user_turn(chat, user_id, "m1"),
        lambda session: "between",
        _user_turn(chat, user_id, "m2"),
    ]
    results = await _in_one_transaction(db_url, lambda session: run_together(session, works))
    assert (results[0], results[2]) == ("first", "between")
    # Turns of one conversation in one group take their positions in the group's order, each
    # user turn two (the second kept for its reply).
    stored = await store.list_turns(chat)
    assert stored == [results[1], results[3]]
    assert [(t.client_id, t.position) for t in stored] == [("m1", 0), ("m2", 2)]
    # A client id twice in one group fails the whole group.
    twice = [_user_turn(chat, user_id, "m3"), _user_turn(chat, user_id, "m3")]
    with pytest.raises(IntegrityError):
        await _in_one_transaction(db_url, lambda session: InsertTurn.run_group(session, twice))
    assert len(await store.list_turns(chat)) == 2
