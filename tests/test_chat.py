"""End to end on /chat: a real server on port 0, real websockets clients, a real database."""

from __future__ import annotations

import asyncio
import itertools
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed

from assistant import issue_token
from assistant.chat.turns import _Deltas
from fusion import OUT_OF_SCOPE, SERVICE_EMOTIONS
from server import RunningServer
from tests.conftest import Client, ClientFactory, ServerFactory

pytestmark = pytest.mark.asyncio

# In scope, so that no reply turns into a handoff to a person.
BANKING = [
    "How do I activate my new card?",
    "Why was my transfer declined?",
    "Can I top up my account by bank transfer?",
]
MESSAGES = [
    "Hi, I ordered a blender last week and it still has not arrived.",
    "My card payment failed twice, can you tell me why?",
    "Please close my account, I am moving to another bank.",
]


def _now() -> str:
    return datetime.now(UTC).isoformat()


async def _turn(client: Client, message_id: str, text: str) -> list[dict[str, Any]]:
    await client.send({"type": "message", "id": message_id, "text": text})
    return await client.recv_until("reply")


async def test_three_turns_update_profile_and_snapshots(
    server: RunningServer, open_client: ClientFactory
) -> None:
    client = await open_client()
    welcome = await client.hello(user={"external_id": "cust-42", "name": "Ada"})
    assert welcome["resumed"] is False and welcome["seq"] == 0
    user_id = welcome["user_id"]
    store = server.runtime.store

    vectors: list[np.ndarray] = []
    last_seq = 0
    for index, text in enumerate(MESSAGES):
        frames = await _turn(client, f"m{index}", text)
        kinds = [f["type"] for f in frames]
        assert kinds[0] == "ack" and frames[0]["id"] == f"m{index}", frames
        assert kinds[-1] == "reply" and "reply.delta" in kinds
        reply = frames[-1]
        deltas = "".join(str(f["text"]) for f in frames if f["type"] == "reply.delta")
        assert deltas == reply["text"] and reply["text"]
        # The intent and emotion heads label every message, with calibrated probabilities.
        intents = {*server.runtime.models.understanding.intents, OUT_OF_SCOPE}
        assert reply["intent"]["label"] in intents
        assert 0.0 <= reply["intent"]["confidence"] <= 1.0
        assert reply["emotion"]["label"] in SERVICE_EMOTIONS
        assert abs(sum(reply["emotion"]["scores"].values()) - 1.0) < 1e-3
        seqs = [int(str(f["seq"])) for f in frames]
        assert seqs == list(range(last_seq + 1, last_seq + 1 + len(frames)))
        last_seq = seqs[-1]
        profile = await store.get_profile(user_id)
        assert profile is not None
        vectors.append(profile.vector.copy())

    assert len(vectors) == 3
    assert vectors[0].shape == (server.runtime.models.dim,) and np.isfinite(vectors[0]).all()
    for before, after in itertools.pairwise(vectors):
        assert not np.allclose(before, after), "the profile vector must move every turn"
    snapshots = await store.list_snapshots(user_id)
    assert len(snapshots) == 3
    turns = await store.list_turns(welcome["session_id"])
    assert [t.role for t in turns] == ["user", "assistant"] * 3
    assert turns[0].text == MESSAGES[0]
    assert turns[0].intent is not None and turns[0].emotion in SERVICE_EMOTIONS


async def test_behaviour_and_text_both_move_the_profile(
    server: RunningServer, open_client: ClientFactory
) -> None:
    client = await open_client()
    welcome = await client.hello(user={"external_id": "fusion-user"})
    items = [
        {"id": "b1", "name": "payment_failed", "at": _now(), "props": {"amount": 49.9}},
        {"id": "b2", "name": "page_view", "at": _now(), "props": {"path": "/help/payments"}},
    ]
    await client.send({"type": "events", "id": "batch", "items": items})
    assert (await client.recv())["stored"] == 2
    await _turn(client, "m1", "Why did my payment fail?")
    store = server.runtime.store
    snapshots = await store.list_snapshots(welcome["user_id"])
    assert [s.reason for s in snapshots] == ["behaviour", "turn"]
    profile = await store.get_profile(welcome["user_id"])
    assert profile is not None
    assert (profile.turn_count, profile.event_count) == (1, 2)
    assert profile.model_version == server.runtime.models.model_version
    shares = profile.modality_contributions
    assert shares["text"] > 0 and shares["behaviour"] > 0 and shares.get("speech", 0.0) == 0.0
    assert abs(sum(shares.values()) - 1.0) < 1e-5


async def test_a_reply_written_at_once_is_one_delta(
    server: RunningServer, open_client: ClientFactory
) -> None:
    client = await open_client()
    await client.hello(user={"external_id": "cust-one-delta"})
    frames = await _turn(client, "m1", "I was charged twice. Can you refund one of them?")
    assert [f["type"] for f in frames] == ["ack", "reply.delta", "reply"], frames
    assert frames[1]["text"] == frames[2]["text"]


async def test_pieces_of_one_pass_of_the_loop_share_a_delta() -> None:
    sent: list[str] = []
    deltas = _Deltas(sent.append)
    deltas.add("Thanks. ")
    deltas.add("It is on its way.")
    await asyncio.sleep(0)
    assert sent == ["Thanks. It is on its way."]
    deltas.add(" More")
    deltas.add(" later.")
    deltas.flush()
    deltas.flush()
    await asyncio.sleep(0)
    assert sent == ["Thanks. It is on its way.", " More later."]


async def test_drop_mid_reply_then_resume_replays_missed_frames_once(
    server: RunningServer, open_client: ClientFactory
) -> None:
    first = await open_client()
    welcome = await first.hello(user={"external_id": "cust-resume"})
    await first.send({"type": "message", "id": "q1", "text": "Where is my parcel?"})
    seen = [await first.recv()]
    while seen[-1]["type"] != "reply.delta":
        seen.append(await first.recv())
    assert seen[0]["type"] == "ack"
    last_seq = int(seen[-1]["seq"])
    await first.ws.close()

    second = await open_client()
    resumed = await second.hello(
        user={"external_id": "cust-resume"}, session_id=welcome["session_id"], last_seq=last_seq
    )
    assert resumed["resumed"] is True and resumed["session_id"] == welcome["session_id"]
    missed = await second.recv_until("reply")
    seqs = [int(f["seq"]) for f in missed]
    assert seqs == list(range(last_seq + 1, last_seq + 1 + len(missed))), "no gap, no duplicate"
    text = "".join(f["text"] for f in seen + missed if f["type"] == "reply.delta")
    assert text == missed[-1]["text"]

    # Nothing further is replayed: the next frame is the answer to the next ping.
    await second.send({"type": "ping", "id": "p"})
    assert (await second.recv())["type"] == "pong"
    # And the stream continues where it left off.
    more = await _turn(second, "q2", "Thanks")
    assert int(more[0]["seq"]) == seqs[-1] + 1


async def test_resume_someone_elses_session_is_forbidden(
    server: RunningServer, open_client: ClientFactory
) -> None:
    owner = await open_client()
    welcome = await owner.hello(user={"external_id": "owner"})
    intruder = await open_client()
    await intruder.send(
        {
            "type": "hello",
            "user": {"external_id": "intruder"},
            "session_id": welcome["session_id"],
            "last_seq": 0,
        }
    )
    error = await intruder.recv()
    assert error["type"] == "error" and error["code"] == "forbidden"
    with pytest.raises(ConnectionClosed) as closed:
        await intruder.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    # The owner's session is untouched.
    frames = await _turn(owner, "o1", "hello again")
    assert frames[-1]["type"] == "reply"


BAD_FRAMES: list[tuple[str, str | dict[str, object], str]] = [
    ("invalid json", "{not json", "invalid_json"),
    ("not an object", "[1, 2]", "invalid_frame"),
    ("unknown type", {"type": "dance", "id": "x"}, "unknown_type"),
    ("missing field", {"type": "message", "id": "x"}, "invalid_field"),
    ("ill-typed field", {"type": "message", "id": "x", "text": 12}, "invalid_field"),
    ("text too long", {"type": "message", "id": "x", "text": "a" * 4001}, "text_too_long"),
    (
        "naive timestamp",
        {"type": "event", "id": "e", "name": "page_view", "at": "2026-01-01T10:00:00"},
        "invalid_timestamp",
    ),
    (
        "timestamp in the future",
        {
            "type": "event",
            "id": "e",
            "name": "page_view",
            "at": (datetime.now(UTC) + timedelta(days=3)).isoformat(),
        },
        "invalid_timestamp",
    ),
    ("hello twice", {"type": "hello"}, "already_started"),
]


@pytest.mark.parametrize(("case", "frame", "code"), BAD_FRAMES, ids=[c[0] for c in BAD_FRAMES])
async def test_bad_input_gets_error_and_connection_stays_open(
    server: RunningServer,
    open_client: ClientFactory,
    caplog: pytest.LogCaptureFixture,
    case: str,
    frame: str | dict[str, object],
    code: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    client = await open_client()
    await client.hello()
    await client.send(frame)
    error = await client.recv()
    assert error["type"] == "error" and error["code"] == code, (case, error)
    assert error["message"]
    if isinstance(frame, dict) and "id" in frame:
        assert error.get("ref") == frame["id"]
    # Still open and still working.
    frames = await _turn(client, "after", "Is the connection still fine?")
    assert frames[-1]["type"] == "reply"
    assert not [r for r in caplog.records if r.exc_info], "client mistakes never log tracebacks"


async def test_frame_before_hello(server: RunningServer, open_client: ClientFactory) -> None:
    client = await open_client()
    await client.send({"type": "message", "id": "early", "text": "hi"})
    error = await client.recv()
    assert error == {
        "type": "error",
        "seq": 0,
        "code": "hello_required",
        "message": error["message"],
        "ref": "early",
    }
    await client.hello()


async def test_binary_frame_is_refused_politely(
    server: RunningServer, open_client: ClientFactory
) -> None:
    client = await open_client()
    await client.hello()
    await client.ws.send(b"\x00\x01\x02")
    error = await client.recv()
    assert error["type"] == "error" and error["code"] == "binary_not_supported"
    await client.send({"type": "ping"})
    assert (await client.recv())["type"] == "pong"


async def test_oversized_frame_closes_1009_and_others_are_unaffected(
    server: RunningServer, open_client: ClientFactory
) -> None:
    bystander = await open_client()
    await bystander.hello(user={"external_id": "bystander"})
    client = await open_client()
    await client.hello()
    await client.send({"type": "message", "id": "big", "text": "x" * (65 * 1024)})
    with pytest.raises(ConnectionClosed) as closed:
        await client.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    frames = await _turn(bystander, "b1", "Can you still hear me?")
    assert frames[-1]["type"] == "reply"


async def test_events_are_stored_idempotently(
    server: RunningServer, open_client: ClientFactory
) -> None:
    client = await open_client()
    welcome = await client.hello(user={"external_id": "shopper"})
    event = {"id": "ev-1", "name": "page_view", "at": _now(), "props": {"path": "/cart"}}
    await client.send({"type": "event", **event})
    assert await client.recv() == {
        "type": "ack",
        "seq": 1,
        "id": "ev-1",
        "stored": 1,
        "duplicates": 0,
    }
    batch = [
        event,
        {"id": "ev-2", "name": "payment_failed", "at": _now(), "props": {"amount": 12.5}},
        {"id": "ev-3", "name": "search", "at": _now(), "props": {"q": "refund"}},
    ]
    await client.send({"type": "events", "id": "batch-1", "items": batch})
    ack = await client.recv()
    assert (ack["stored"], ack["duplicates"]) == (2, 1)
    events = await server.runtime.store.list_events(welcome["user_id"])
    assert sorted(e.client_id for e in events) == ["ev-1", "ev-2", "ev-3"]
    by_id = {e.client_id: e for e in events}
    assert by_id["ev-2"].props == {"amount": 12.5}


async def test_same_message_id_twice_is_one_turn(
    server: RunningServer, open_client: ClientFactory
) -> None:
    client = await open_client()
    welcome = await client.hello()
    frames = await _turn(client, "dup", "My refund is late")
    await client.send({"type": "message", "id": "dup", "text": "My refund is late"})
    again = await client.recv()
    assert again["type"] == "ack" and again["id"] == "dup"
    await client.send({"type": "ping", "id": "sync"})
    assert (await client.recv())["type"] == "pong", "no second reply for a duplicate"
    turns = await server.runtime.store.list_turns(welcome["session_id"])
    assert [t.role for t in turns] == ["user", "assistant"]
    assert frames[-1]["type"] == "reply"


async def test_pii_is_redacted_before_storage(
    server: RunningServer, open_client: ClientFactory
) -> None:
    client = await open_client()
    welcome = await client.hello()
    await _turn(client, "pii", "My card 4111 1111 1111 1111 and mail ada@example.com")
    turns = await server.runtime.store.list_turns(welcome["session_id"])
    assert turns[0].text == "My card [CARD] and mail [EMAIL]"


async def test_concurrent_sessions_each_get_their_own_replies(
    server: RunningServer, open_client: ClientFactory
) -> None:
    clients = [await open_client() for _ in range(5)]
    for index, client in enumerate(clients):
        await client.hello(user={"external_id": f"parallel-{index}"})

    async def converse(index: int, client: Client) -> list[str]:
        replies = []
        for n in range(3):
            frames = await _turn(client, f"c{index}-{n}", f"{BANKING[n]} (customer {index})")
            assert frames[0]["id"] == f"c{index}-{n}"
            replies.append(str(frames[-1]["turn_id"]))
        return replies

    results = await asyncio.gather(*(converse(i, c) for i, c in enumerate(clients)))
    turn_ids = [t for r in results for t in r]
    assert len(set(turn_ids)) == 15


class TestWidgetTokens:
    SECRET = "s3cret-for-tests"

    async def _hello(self, srv: RunningServer, token: str | None) -> list[dict[str, Any]]:
        from websockets.asyncio.client import connect

        async with connect(srv.url + "/chat") as ws:
            client = Client(ws)
            await client.send({"type": "hello", **({"token": token} if token else {})})
            frames = [await client.recv()]
            if frames[0]["type"] == "welcome":
                return frames
            with pytest.raises(ConnectionClosed) as closed:
                await client.recv()
            assert closed.value.rcvd is not None
            frames.append({"close": closed.value.rcvd.code})
            return frames

    async def test_valid_token_is_welcomed(self, start_server: ServerFactory) -> None:
        async with start_server(widget_secret=self.SECRET) as srv:
            token = issue_token(self.SECRET, "tok-user", tenant="acme", ttl_s=60)
            frames = await self._hello(srv, token)
            assert frames[0]["type"] == "welcome"
            user = await srv.runtime.store.get_user(str(frames[0]["user_id"]))
            assert user is not None and (user.tenant, user.external_id) == ("acme", "tok-user")

    @pytest.mark.parametrize("problem", ["forged", "expired", "missing", "garbage", "non-ascii"])
    async def test_bad_token_is_refused_with_1008(
        self, start_server: ServerFactory, problem: str
    ) -> None:
        token = {
            "forged": issue_token("another-secret", "tok-user", tenant="acme", ttl_s=60),
            "expired": issue_token(self.SECRET, "tok-user", tenant="acme", ttl_s=-5),
            "missing": None,
            "garbage": "not-a-token",
            "non-ascii": "eyJzdWIiOiJ4In0.\u00e9",
        }[problem]
        async with start_server(widget_secret=self.SECRET) as srv:
            error, close = await self._hello(srv, token)
            assert error["type"] == "error" and error["code"] == "unauthorized"
            assert close == {"close": 1008}

    async def test_anonymous_allowed_without_secret_with_warning(
        self, start_server: ServerFactory, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.WARNING)
        async with start_server() as srv:
            frames = await self._hello(srv, None)
            assert frames[0]["type"] == "welcome"
        assert any("ASSISTANT_WIDGET_SECRET" in r.getMessage() for r in caplog.records)


async def _http_get(srv: RunningServer, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = raw.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body


async def test_http_probes(server: RunningServer) -> None:
    assert await _http_get(server, "/healthz") == (200, "ok\n")
    assert await _http_get(server, "/readyz") == (200, "ready\n")
    status, _ = await _http_get(server, "/nowhere")
    assert status == 404
