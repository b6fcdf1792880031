"""Two server processes sharing PostgreSQL and Redis, as two replicas behind one address.

The user chats on replica A; an operator on replica B watches the session and takes it
over, and messages flow both ways between the processes. Then A gets SIGTERM in the middle
of a turn: it finishes the turn, closes the user's connection with 1012, and the user
resumes on B with `session_id` and `last_seq`, without losing or repeating a frame.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from assistant import Settings, create_operator, migrate_database
from assistant.cluster.messages import (
    Answer,
    Call,
    SessionSnapshot,
    decode_live,
    decode_message,
    decode_snapshot,
    encode_message,
    encode_snapshot,
)
from tests.conftest import ServerFactory, pg_admin_url
from tests.support.databases import temporary_pg_database, temporary_redis_prefix
from tests.support.operator_helpers import OperatorClient
from tests.support.server_process import server_process
from tests.support.tcp_proxy import TcpProxy

REDIS_URL_ENV = "ASSISTANT_TEST_REDIS_URL"
RECV_TIMEOUT_S = 30.0

# What the user and the operator say: none of it may reach the logs.
TEXTS = {
    "m1": "My card payment was declined at the shop",
    "m2": "I still have not received my new card",
    "m3": "How long does a transfer to another bank take?",
    "m4": "Thanks, can you check the delivery address?",
    "m5": "What are your exchange rate fees?",
}
OPERATOR_TEXTS = ["Hello, this is Sam from support.", "I can see your address, one moment."]


def redis_url() -> str:
    url = os.environ.get(REDIS_URL_ENV)
    if not url:
        pytest.skip(f"the cluster test needs Redis: set {REDIS_URL_ENV}")
    return url


@dataclass
class Replica:
    name: str
    process: asyncio.subprocess.Process
    url: str
    log_path: Path

    def json_logs(self) -> list[dict[str, Any]]:
        lines = self.log_path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]


@asynccontextmanager
async def replica(name: str, env: dict[str, str], tmp_path: Path) -> AsyncIterator[Replica]:
    """`python server.py --port 0` as its own process; killed if the test leaves it running."""
    env = {**env, "ASSISTANT_REPLICA_ID": name}
    async with server_process(env, tmp_path / f"{name}.log", host=None, cwd=tmp_path) as server:
        yield Replica(name, server.process, server.url, server.log)


class User:
    """A widget client that keeps every session frame it processed, across connections."""

    def __init__(self, external_id: str) -> None:
        self.external_id = external_id
        self.frames: dict[int, dict[str, Any]] = {}
        self.session_id: str | None = None
        self.ws: ClientConnection | None = None

    @property
    def last_seq(self) -> int:
        return max(self.frames, default=0)

    async def connect(self, url: str) -> dict[str, Any]:
        self.ws = await connect(url + "/chat")
        hello: dict[str, Any] = {"type": "hello", "user": {"external_id": self.external_id}}
        if self.session_id is not None:
            hello |= {"session_id": self.session_id, "last_seq": self.last_seq}
        await self.ws.send(json.dumps(hello))
        welcome = await self.recv()
        assert welcome["type"] == "welcome", welcome
        self.session_id = welcome["session_id"]
        return welcome

    async def recv(self) -> dict[str, Any]:
        assert self.ws is not None
        frame: dict[str, Any] = json.loads(await asyncio.wait_for(self.ws.recv(), RECV_TIMEOUT_S))
        seq = frame["seq"]
        if seq > 0:
            assert seq not in self.frames, f"frame {seq} came twice: {frame}"
            assert seq == self.last_seq + 1, f"frame {self.last_seq + 1} was skipped: {frame}"
            self.frames[seq] = frame
        return frame

    async def until(self, done: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        frames = []
        while True:
            frames.append(await self.recv())
            if done(frames[-1]):
                return frames

    async def say(self, message_id: str) -> None:
        assert self.ws is not None
        await self.ws.send(
            json.dumps({"type": "message", "id": message_id, "text": TEXTS[message_id]})
        )

    def acked(self) -> Counter[str]:
        return Counter(f["id"] for f in self.frames.values() if f["type"] == "ack")


def is_type(frame_type: str) -> Callable[[dict[str, Any]], bool]:
    return lambda frame: frame["type"] == frame_type


async def user_turn(operator: OperatorClient) -> dict[str, Any]:
    """The next user turn pushed to the operator watching the session."""
    while True:
        pushed = await operator.next_pushed("session.turn")
        if pushed["turn"]["role"] == "user":
            turn: dict[str, Any] = pushed["turn"]
            return turn


async def listed(operator: OperatorClient, session_id: str) -> dict[str, Any]:
    """The session in sessions.list, once presence has spread to the operator's replica."""
    for _ in range(100):
        sessions = (await operator.ok("sessions.list"))["sessions"]
        found: list[dict[str, Any]] = [s for s in sessions if s["session_id"] == session_id]
        if found:
            assert len(found) == 1, "a session is listed once, by the replica holding it"
            return found[0]
        await asyncio.sleep(0.1)
    raise AssertionError("the session never appeared in sessions.list")


@asynccontextmanager
async def cluster_env(tmp_path: Path) -> AsyncIterator[dict[str, str]]:
    """The environment of both replicas: one fresh database, one Redis prefix."""
    redis = redis_url()
    async with (
        temporary_pg_database(pg_admin_url()) as db_url,
        temporary_redis_prefix(redis) as prefix,
    ):
        await asyncio.to_thread(migrate_database, db_url)
        env = {
            **os.environ,
            "ASSISTANT_HOST": "127.0.0.1",
            "ASSISTANT_DB_URL": db_url,
            "ASSISTANT_REDIS_URL": redis,
            "ASSISTANT_REDIS_PREFIX": prefix,
            "ASSISTANT_DEVICE": "cpu",
            "ASSISTANT_LOG_FORMAT": "json",
            "ASSISTANT_DRAIN_TIMEOUT_S": "30",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }
        yield env


def test_cluster_messages_round_trip_and_garbage_is_dropped() -> None:
    call = Call("c1", "replica-b", "say", session_id="s" * 32, operator_id="o", text="Hi é")
    answer = Answer("c1", data={"turn_id": "t"})
    snapshot = SessionSnapshot("s" * 32, "u" * 32, 3, ((2, '{"seq":2}'), (3, '{"seq":3}')))
    assert decode_message(encode_message(call)) == call
    assert decode_message(encode_message(answer)) == answer
    assert decode_snapshot(encode_snapshot(snapshot)) == snapshot
    unknown_action = '{"kind": "call", "id": "x", "origin": "y", "action": "reboot"}'
    for garbage in ("", "[]", '{"kind": "call"}', unknown_action, b"\xff", '{"kind": 1}'):
        assert decode_message(garbage) is None, garbage
    assert decode_live('{"origin": "a", "session_id": "s", "frame": []}') is None
    assert decode_snapshot('{"session_id": "s"}') is None


async def test_two_replicas_share_sessions_operators_and_drain(tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        env = await stack.enter_async_context(cluster_env(tmp_path))
        a, b = await asyncio.gather(
            stack.enter_async_context(replica("replica-a", env, tmp_path)),
            stack.enter_async_context(replica("replica-b", env, tmp_path)),
        )
        _, key = await create_operator(Settings(db_url=env["ASSISTANT_DB_URL"]), "sam", "agent")

        # The user chats with the bot on A.
        user = User("cust-cluster")
        welcome = await user.connect(a.url)
        assert welcome["resumed"] is False
        session_id = welcome["session_id"]
        await user.say("m1")
        await user.until(is_type("reply"))

        # An operator on B finds the session, watches it and takes it over.
        operator = OperatorClient(await stack.enter_async_context(connect(b.url + "/operator")))
        await operator.ok("auth", token=key)
        summary = await listed(operator, session_id)
        assert (summary["status"], summary["connected"]) == ("bot", True)
        watched = await operator.ok("session.watch", session_id=session_id)
        assert [t["role"] for t in watched["turns"]] == ["user", "assistant"]
        assert watched["turns"][0]["text"] == TEXTS["m1"]
        await operator.ok("session.takeover", session_id=session_id)
        assert (await user.until(is_type("operator.joined")))[-1]["name"] == "sam"
        await operator.next_pushed("session.state", status="operator")

        # Operator to user, and user to operator, across the two processes.
        await operator.ok("session.say", session_id=session_id, text=OPERATOR_TEXTS[0])
        said = (await user.until(is_type("operator.message")))[-1]
        assert said["text"] == OPERATOR_TEXTS[0]
        await user.say("m2")
        await user.until(is_type("ack"))
        assert (await user_turn(operator))["text"] == TEXTS["m2"]

        # The bot answers again; SIGTERM reaches A while it is writing the reply to m3.
        await operator.ok("session.release", session_id=session_id)
        await user.until(is_type("operator.left"))
        await user.say("m3")
        await user.until(is_type("ack"))
        a.process.send_signal(signal.SIGTERM)
        after_ack = []
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                after_ack.append(await user.recv())
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
        assert await asyncio.wait_for(a.process.wait(), 60) == 0

        # This client had processed the stream up to the ack of m3 when the connection went
        # (what came after was still unread, as when a page is reloaded): it resumes on B
        # from there, and B must send exactly what A had produced after that ack.
        for frame in after_ack:
            del user.frames[frame["seq"]]
        resumed = await user.connect(b.url)
        assert (resumed["session_id"], resumed["resumed"]) == (session_id, True)
        replayed = [await user.recv() for _ in range(resumed["last_seq"] - user.last_seq)]
        assert replayed[: len(after_ack)] == after_ack
        assert replayed[-1]["type"] == "reply", "A finished the turn in flight before closing"
        replies = [f for f in user.frames.values() if f["type"] == "reply"]
        assert len(replies) == 2, "the reply to m3 arrives exactly once"

        # The conversation goes on, now held by B, and the operator there still watches it.
        summary = await listed(operator, session_id)
        assert summary["connected"] is True
        await operator.ok("session.takeover", session_id=session_id)
        await user.until(is_type("operator.joined"))
        await operator.ok("session.say", session_id=session_id, text=OPERATOR_TEXTS[1])
        assert (await user.until(is_type("operator.message")))[-1]["text"] == OPERATOR_TEXTS[1]
        await user.say("m4")
        await user.until(is_type("ack"))
        assert (await user_turn(operator))["text"] == TEXTS["m3"], "from A, before the drain"
        assert (await user_turn(operator))["text"] == TEXTS["m4"], "from B"
        await operator.ok("session.release", session_id=session_id)
        await user.say("m5")
        await user.until(is_type("reply"))

        assert user.acked() == Counter(list(TEXTS)), "every message acked exactly once"
        assert list(user.frames) == list(range(1, user.last_seq + 1))
        # Replaying the whole session on a fresh connection gives back the same stream.
        again = User(user.external_id)
        again.session_id = session_id
        welcome = await again.connect(b.url)
        assert welcome["last_seq"] == user.last_seq
        while again.last_seq < welcome["last_seq"]:
            await again.recv()
        assert again.frames == user.frames
        assert again.ws is not None
        await again.ws.close()

    # Both replicas logged JSON lines, tagged with the session, and never the conversation.
    for rep in (a, b):
        text = rep.log_path.read_text(encoding="utf-8")
        for said_text in [*TEXTS.values(), *OPERATOR_TEXTS, user.external_id]:
            assert said_text not in text, f"{rep.name} logged conversation content"
    started = [r for r in a.json_logs() if r["message"] == "session started"]
    assert started and started[0]["session_id"] == session_id
    resumed_logs = [r for r in b.json_logs() if r["message"] == "session resumed"]
    assert resumed_logs and resumed_logs[0]["session_id"] == session_id
    assert {"time", "level", "logger", "user_id"} <= set(resumed_logs[0])


async def test_redis_outage_recovery_and_handover_between_replicas(
    start_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis goes away from replica A (its connection is cut): A keeps serving on its own
    and warns once; when Redis is back, A reconnects and is part of the cluster again, and
    hands the session to B when the user's next connection lands there."""
    caplog.set_level(logging.WARNING, logger="assistant.cluster.bus")
    target = urlsplit(redis_url())
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 6379)
    await proxy.start()
    prefix = f"test-{uuid.uuid4().hex[:8]}:"
    through_proxy = target._replace(netloc=f"127.0.0.1:{proxy.port}").geturl()
    try:
        async with (
            start_server(redis_url=through_proxy, redis_prefix=prefix) as a,
            start_server(redis_url=redis_url(), redis_prefix=prefix) as b,
        ):
            assert a.runtime.cluster.up and b.runtime.cluster.up
            _, key = await create_operator(a.runtime.settings, "riley", "agent")
            user = User("cust-outage")
            session_id = (await user.connect(a.url))["session_id"]
            async with connect(b.url + "/operator") as ws:
                operator = OperatorClient(ws)
                await operator.ok("auth", token=key)
                await listed(operator, session_id)

                await proxy.cut()
                await user.say("m1")
                await user.until(is_type("reply"))
                assert not a.runtime.cluster.up
                await user.say("m2")
                await user.until(is_type("reply"))
                warnings = [r for r in caplog.records if "redis unreachable" in r.getMessage()]
                assert len(warnings) == 1, "one warning for the outage"

                await proxy.restore()
                for _ in range(200):
                    if a.runtime.cluster.up:
                        break
                    await asyncio.sleep(0.05)
                assert a.runtime.cluster.up, "A reconnected by itself"
                await listed(operator, session_id)
                await operator.ok("session.takeover", session_id=session_id)
                await user.until(is_type("operator.joined"))

                # The user's next connection lands on B while A holds the session: A hands
                # it over (with the operator's hold) and closes the old connection.
                old = user.ws
                assert old is not None
                resumed = await user.connect(b.url)
                assert (resumed["session_id"], resumed["resumed"]) == (session_id, True)
                with pytest.raises(ConnectionClosed) as closed:
                    while True:
                        await asyncio.wait_for(old.recv(), RECV_TIMEOUT_S)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
                assert session_id in b.runtime.chat.sessions
                assert session_id not in a.runtime.chat.sessions
                await operator.ok("session.say", session_id=session_id, text=OPERATOR_TEXTS[0])
                said = (await user.until(is_type("operator.message")))[-1]
                assert said["text"] == OPERATOR_TEXTS[0]
            assert user.ws is not None
            await user.ws.close()
    finally:
        await proxy.close()
