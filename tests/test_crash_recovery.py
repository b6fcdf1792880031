"""kill -9 during a burst of messages and events, restart on the same database, resume.

The server runs as a separate process (tests/support/server_process.py) on an SQLite file. A client
that does what docs/protocol.md asks of clients (resume with `last_seq`, resend what was not
acked, with the same ids) checks every promise of docs/reliability.md about crashes: each
acked message and event is in the database; the resumed stream continues at `last_seq` + 1
with no gap and no frame twice; every message is answered exactly once, including those whose
turn was cut off by the crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from assistant import migrate_database
from assistant.chat.recovery import unanswered
from profiles import Conflict, NotFound, OperatorStore, Store, StoredFrame, TurnRecord
from tests.conftest import Client, ServerFactory
from tests.support.server_process import ServerProcess

MESSAGES = 30
QUESTIONS = (
    "How do I activate my new card?",
    "Why was my transfer declined?",
    "Can I top up my account by bank transfer?",
)
# Refusals of a frame that was not stored: the client sends it again later.
REFUSALS = {"overloaded", "unavailable", "rate_limited"}
SETTLE_S = 180.0


@dataclass
class Ledger:
    """What a careful client knows of its session, checked frame by frame."""

    session_id: str | None = None
    last_seq: int = 0
    acks: Counter[str] = field(default_factory=Counter)
    replies: Counter[str] = field(default_factory=Counter)  # by turn id
    failed: set[str] = field(default_factory=set)  # acked messages whose turn failed
    refused: set[str] = field(default_factory=set)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def until(self, check: Callable[[], bool]) -> None:
        while not check():
            self.changed.clear()
            await self.changed.wait()

    def take(self, frame: dict[str, Any]) -> None:
        self.changed.set()
        seq = frame["seq"]
        if seq:
            assert seq == self.last_seq + 1, f"after seq {self.last_seq} came {seq}: {frame}"
            self.last_seq = seq
        kind = frame["type"]
        if kind == "ack":
            self.acks[frame["id"]] += 1
            assert self.acks[frame["id"]] == 1, f"acked twice: {frame}"
            self.refused.discard(frame["id"])
        elif kind == "reply":
            self.replies[frame["turn_id"]] += 1
            assert self.replies[frame["turn_id"]] == 1, f"answered twice: {frame}"
            assert frame["text"]
        elif kind == "error":
            ref = frame["ref"]
            assert isinstance(ref, str) and frame["code"] != "internal", frame
            if frame["code"] in REFUSALS and ref not in self.acks:
                self.refused.add(ref)
            else:
                assert ref in self.acks, frame
                self.failed.add(ref)


def message(index: int) -> dict[str, Any]:
    return {"type": "message", "id": f"m{index}", "text": QUESTIONS[index % len(QUESTIONS)]}


def event(index: int) -> dict[str, Any]:
    return {
        "type": "event",
        "id": f"e{index}",
        "name": "page_view",
        "at": "2026-11-30T06:00:00Z",
        "props": {"path": f"/help/{index}"},
    }


async def burst(ws: ClientConnection, frames: list[dict[str, Any]]) -> None:
    """Every frame, one after the other, without waiting for answers: faster than the server
    answers messages (a turn takes about 15 ms on 2 cores), so that turns queue up."""
    for frame in frames:
        await ws.send(json.dumps(frame))
        await asyncio.sleep(0.002)


async def read(ws: ClientConnection, ledger: Ledger) -> int | None:
    """Take every frame into the ledger until the connection ends; the server's close code."""
    try:
        async for raw in ws:
            ledger.take(json.loads(raw))
    except ConnectionClosed as closed:
        return None if closed.rcvd is None else closed.rcvd.code
    received = ws.protocol.close_rcvd
    return None if received is None else received.code


async def test_kill_9_mid_burst_then_resume(tmp_path: Path) -> None:
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'crash.db'}"
    await asyncio.to_thread(migrate_database, db_url)
    log = tmp_path / "server.log"
    # No message rate limit: the burst is the point.
    env = {"ASSISTANT_RATE_CONNECTION_MESSAGES": "0", "ASSISTANT_RATE_USER_MESSAGES": "0"}
    ledger = Ledger()
    frames = [f(i) for i in range(MESSAGES) for f in (message, event)]

    server = await ServerProcess.start(db_url, log, env)
    try:
        async with connect(server.url + "/chat") as ws:
            await ws.send(json.dumps({"type": "hello", "user": {"external_id": "crash-user"}}))
            welcome = json.loads(await ws.recv())
            ledger.session_id, user_id = welcome["session_id"], welcome["user_id"]
            reader = asyncio.create_task(read(ws, ledger))
            sender = asyncio.create_task(burst(ws, frames))
            # The crash comes while frames still arrive, a few replies were sent and more
            # turns are queued or half streamed.
            async with asyncio.timeout(60):
                await ledger.until(lambda: len(ledger.replies) >= 3)
            await server.kill()
            await reader
            with contextlib.suppress(ConnectionClosed):
                await sender
    finally:
        await server.kill()
    replied_before = set(ledger.replies)
    acked_before = set(ledger.acks)

    # Every acked frame is in the database.
    store = Store.open(db_url)
    try:
        turns = {t.client_id: t for t in await store.list_turns(ledger.session_id)}
        events = {e.client_id for e in await store.list_events(user_id, limit=1000)}
    finally:
        await store.close()
    assert {a for a in acked_before if a.startswith("m")} <= set(turns)
    assert {a for a in acked_before if a.startswith("e")} <= events
    cut_off = {a for a in acked_before if a.startswith("m")} - {
        c for c, t in turns.items() if t.id in replied_before
    }
    assert cut_off, "some acked messages were still waiting for their reply at the crash"

    server = await ServerProcess.start(db_url, log, env)
    try:
        async with connect(server.url + "/chat") as ws:
            await ws.send(
                json.dumps(
                    {
                        "type": "hello",
                        "user": {"external_id": "crash-user"},
                        "session_id": ledger.session_id,
                        "last_seq": ledger.last_seq,
                    }
                )
            )
            welcome = json.loads(await ws.recv())
            assert welcome["type"] == "welcome", welcome
            assert (welcome["resumed"], welcome["session_id"]) == (True, ledger.session_id)
            assert welcome["last_seq"] >= ledger.last_seq
            reader = asyncio.create_task(read(ws, ledger))
            # The frames stored before the crash come first; then resend what was not acked.
            async with asyncio.timeout(30):
                await ledger.until(lambda: ledger.last_seq >= welcome["last_seq"])
            async with asyncio.timeout(SETTLE_S):
                while not settled(ledger, frames):
                    for frame in frames:
                        if frame["id"] not in ledger.acks:
                            await ws.send(json.dumps(frame))
                    # What is still refused is sent again a second later.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(ledger.until(lambda: settled(ledger, frames)), 1.0)
            # Now a clean restart: SIGTERM drains and closes the connection with 1012.
            assert await server.stop() == 0
            assert await reader == 1012
    finally:
        await server.stop()

    store = Store.open(db_url)
    try:
        stored = [t for t in await store.list_turns(ledger.session_id) if t.role == "user"]
        events = {e.client_id for e in await store.list_events(user_id, limit=1000)}
    finally:
        await store.close()
    assert sorted(t.client_id or "" for t in stored) == sorted(f"m{i}" for i in range(MESSAGES))
    assert events == {f"e{i}" for i in range(MESSAGES)}
    # Each message answered once over both servers; the cut-off ones by the second.
    answered = {t.client_id for t in stored if ledger.replies[t.id] == 1}
    assert answered | ledger.failed == {f"m{i}" for i in range(MESSAGES)}
    assert cut_off - ledger.failed <= answered

    # After the clean restart the session goes on where it was, without Redis.
    server = await ServerProcess.start(db_url, log, env)
    try:
        async with connect(server.url + "/chat") as ws:
            hello = {"type": "hello", "user": {"external_id": "crash-user"}}
            await ws.send(
                json.dumps({**hello, "session_id": ledger.session_id, "last_seq": ledger.last_seq})
            )
            welcome = json.loads(await ws.recv())
            assert (welcome["resumed"], welcome["last_seq"]) == (True, ledger.last_seq)
            reader = asyncio.create_task(read(ws, ledger))
            await ws.send(json.dumps({"type": "message", "id": "after", "text": QUESTIONS[0]}))
            async with asyncio.timeout(60):
                await ledger.until(lambda: len(ledger.replies) > MESSAGES - len(ledger.failed))
            await ws.close()
            await reader
    finally:
        await server.stop()
    assert ledger.acks["after"] == 1


def settled(ledger: Ledger, frames: list[dict[str, Any]]) -> bool:
    """Every frame acked, and every acked message answered or failed."""
    if any(frame["id"] not in ledger.acks for frame in frames):
        return False
    return len(ledger.replies) + len(ledger.failed) >= MESSAGES


# the parts


def _turn(
    turn_id: str, client_id: str, *, role: str = "user", intent: str | None = None
) -> TurnRecord:
    return TurnRecord(
        id=turn_id,
        conversation_id="c",
        user_id="u",
        role=role,  # type: ignore[arg-type]
        client_id=client_id,
        text="hello",
        intent=intent,
        intent_confidence=None,
        emotion=None,
        emotion_scores=None,
        latency_ms=None,
        created_at=datetime.now(UTC),
        position=0,
    )


def _frames(*frames: dict[str, Any]) -> list[StoredFrame]:
    return [StoredFrame("c", seq, json.dumps(f)) for seq, f in enumerate(frames, 1)]


def test_unanswered_turns_are_those_after_the_last_outcome() -> None:
    turns = [
        _turn("t1", "m1", intent="card_arrival"),  # answered, then labelled
        _turn("r1", "", role="assistant"),
        _turn("t2", "m2"),  # its reply was sent; the labels were lost in the crash
        _turn("t3", "m3"),  # failed after its ack: not answered again
        _turn("t4", "m4"),  # acked, cut off
        _turn("t5", "m5"),  # stored, its ack lost in the crash
    ]
    frames = _frames(
        {"type": "ack", "id": "m1"},
        {"type": "reply", "turn_id": "t1", "text": "a"},
        {"type": "error", "code": "overloaded", "ref": "m4"},  # refused before it was stored
        {"type": "ack", "id": "m2"},
        {"type": "ack", "id": "m3"},
        {"type": "reply", "turn_id": "t2", "text": "b"},
        {"type": "error", "code": "internal", "ref": "m3"},
        {"type": "ack", "id": "m4"},
        {"type": "reply.delta", "turn_id": "t4", "text": "half"},
    )
    assert [t.id for t in unanswered(turns, frames)] == ["t4", "t5"]
    assert unanswered(turns[:3], frames) == []
    assert [t.id for t in unanswered(turns, [])] == ["t2", "t3", "t4", "t5"]


async def test_frames_are_pruned_closed_and_erased_with_their_conversation(
    sqlite_url: str,
) -> None:
    store = Store.open(sqlite_url)
    ops = OperatorStore(store)
    try:
        user = await store.upsert_user("default", "framed")
        kept = await store.open_conversation(user.id, "chat")
        closed = await store.open_conversation(user.id, "chat")
        for conversation in (kept, closed):
            await store.append_frames(
                [StoredFrame(conversation.id, seq, f'{{"seq":{seq}}}') for seq in range(1, 11)]
            )
        with pytest.raises(Conflict):
            await store.append_frames([StoredFrame(kept.id, 10, "{}")])
        with pytest.raises(NotFound):
            await store.append_frames([StoredFrame("0" * 32, 1, "{}")])
        assert [f.seq for f in await store.list_frames(kept.id, limit=3)] == [8, 9, 10]
        await store.drop_frames(kept.id, below=4, above=8)
        assert [f.seq for f in await store.list_frames(kept.id, limit=100)] == [4, 5, 6, 7, 8]
        await store.set_conversation_status(closed.id, "closed")
        assert await store.list_frames(closed.id, limit=100) == []
        report = await ops.erase_user(user.id, None)
        assert report is not None and report.rows["session_frames"] == 5
        assert await store.list_frames(kept.id, limit=100) == []
    finally:
        await store.close()


async def test_the_journal_keeps_the_latest_frames_of_a_session(
    start_server: ServerFactory,
) -> None:
    async with start_server(replay_frames=8) as srv, connect(srv.url + "/chat") as ws:
        client = Client(ws)
        welcome = await client.hello(user={"external_id": "long-talk"})
        for index in range(6):
            await client.send({"type": "message", "id": f"l{index}", "text": QUESTIONS[0]})
            last = (await client.recv_until("reply"))[-1]
        await client.send({"type": "ping", "id": "sync"})
        await client.recv_until("pong")
        stored = await srv.runtime.store.list_frames(welcome["session_id"], limit=1000)
        assert stored[-1].seq == last["seq"] and last["seq"] > 16
        assert len(stored) < 16, "pruned to between one and two times ASSISTANT_REPLAY_FRAMES"
        assert [f.seq for f in stored] == list(range(stored[0].seq, last["seq"] + 1))
