"""/operator end to end (real server, real clients) and the operator store on both backends."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed

from assistant.operators.keys import hash_secret, new_key, parse_key, verify_secret
from assistant.operators.protocol import (
    COMMAND_TYPES,
    OperatorError,
    OperatorErrorCode,
    parse_operator_frame,
)
from fusion import SERVICE_EMOTIONS
from profiles import (
    OperatorStore,
    ProfileUpdate,
    Store,
    TurnLabels,
    UserQuery,
    top_k_cosine,
)
from server import RunningServer
from tests.conftest import Client, ClientFactory
from tests.support.operator_helpers import make_operator, operator_client

ROOT = Path(__file__).resolve().parent.parent
ASSISTANT = Path(sys.executable).parent / "assistant"
DOC = (ROOT / "docs" / "operators.md").read_text(encoding="utf-8")
_BLOCK = re.compile(r"^```json(?P<tag>[^\n]*)\n(?P<body>.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def _now() -> str:
    return datetime.now(UTC).isoformat()


async def _turn(client: Client, message_id: str, text: str) -> list[dict[str, Any]]:
    await client.send({"type": "message", "id": message_id, "text": text})
    return await client.recv_until("reply")


# keys


def test_keys_are_hashed_with_salt_and_verify_in_constant_time() -> None:
    key, stored = new_key("a" * 32)
    parsed = parse_key(key)
    assert parsed is not None and parsed.operator_id == "a" * 32
    assert parsed.secret not in stored and key not in stored
    assert stored.startswith("scrypt$") and len(stored) <= 128
    assert verify_secret(parsed.secret, stored)
    # Another last character (the random secret may end with any of them).
    other = "B" if parsed.secret.endswith("A") else "A"
    assert not verify_secret(parsed.secret[:-1] + other, stored)
    assert hash_secret(parsed.secret) != stored, "a fresh salt every time"
    assert parse_key("csa_nope") is None and parse_key("é" * 80) is None
    assert not verify_secret(parsed.secret, "garbage")


# protocol documentation


def _examples(tag: str) -> list[str]:
    return [m["body"] for m in _BLOCK.finditer(DOC) if m["tag"].strip() == tag]


def test_operator_doc_examples_parse() -> None:
    client = _examples("operator-client")
    server = _examples("operator-server")
    assert client and server
    documented = set()
    for body in client:
        frame = parse_operator_frame(body)
        assert not isinstance(frame, OperatorError), (body, frame)
        documented.add(frame.type)
    assert documented >= COMMAND_TYPES | {"auth"}
    for body in server:
        frame = json.loads(body)
        assert frame["type"] in {"result", "error", "session.turn", "session.state", "pong"}
        assert isinstance(frame["seq"], int)
        if frame["type"] == "error":
            OperatorErrorCode(frame["code"])
    codes = set(re.findall(r"^\| `([a-z_]+)` \|", DOC.split("## Error codes", 1)[1], re.M))
    assert codes == {c.value for c in OperatorErrorCode}


# the store, on SQLite and PostgreSQL


async def _seed_users(store: Store, count: int) -> list[str]:
    ids = []
    for n in range(count):
        user = await store.upsert_user("default", f"ext-{n:03d}", name=f"Zoë Person{n:03d}")
        ids.append(user.id)
    return ids


async def test_search_filters_and_pagination(db_url: str) -> None:
    store = Store.open(db_url)
    ops = OperatorStore(store)
    try:
        ids = await _seed_users(store, 25)
        conv = await store.open_conversation(ids[3], "chat")
        turn, _ = await store.add_user_turn(conv.id, ids[3], "m1", "my card is blocked")
        vector = np.ones(8, dtype=np.float32)
        await store.finish_turn(
            turn.id,
            labels=TurnLabels("card_blocked", 0.9, "angry", {"angry": 0.8}),
            reply_text="ok",
            latency_ms=1.0,
            profile=ProfileUpdate(vector, "v1", "turn", {"text": 1.0}, turns=1),
        )
        seen: list[str] = []
        after = None
        while True:
            page = await ops.search_users(UserQuery(q="zoë", limit=10, after=after))
            seen += [i.user.id for i in page.items]
            if page.next is None:
                break
            after = page.next
        assert sorted(seen) == sorted(ids) and len(seen) == 25, "every user once, no repeats"
        by_ext = await ops.search_users(UserQuery(q="ext-01"))
        assert {i.user.external_id for i in by_ext.items} == {f"ext-{n:03d}" for n in range(10, 20)}
        exact = await ops.search_users(UserQuery(q=ids[7]))
        assert [i.user.id for i in exact.items] == [ids[7]]
        assert (await ops.search_users(UserQuery(q="ZOË PERSON004"))).items[0].user.id == ids[4]
        angry = await ops.search_users(UserQuery(emotion="angry"))
        assert [i.user.id for i in angry.items] == [ids[3]]
        assert angry.items[0].recent_intent == "card_blocked"
        by_intent = await ops.search_users(UserQuery(intent="card_blocked"))
        assert [i.user.id for i in by_intent.items] == [ids[3]]
        assert not (await ops.search_users(UserQuery(q="100%_"))).items
        future = datetime.now(UTC) + timedelta(hours=1)
        assert not (await ops.search_users(UserQuery(seen_after=future))).items
        assert len((await ops.search_users(UserQuery(seen_before=future, limit=100))).items) == 25
        # The live list's labels come from the same columns, by user id.
        summaries = await ops.user_summaries({ids[3], ids[4], "0" * 32})
        assert set(summaries) == {ids[3], ids[4]}
        assert summaries[ids[3]] == angry.items[0]
        assert (summaries[ids[4]].current_emotion, summaries[ids[4]].turn_count) == (None, 0)
        assert await ops.user_summaries(set()) == {}
    finally:
        await store.close()


async def test_neighbours_by_cosine(db_url: str) -> None:
    store = Store.open(db_url)
    ops = OperatorStore(store)
    try:
        ids = await _seed_users(store, 6)
        base = np.array([1, 0, 0, 0], dtype=np.float32)
        for n, user_id in enumerate(ids):
            vector = base + np.array([0, n * 0.3, 0, 0], dtype=np.float32)
            await store.apply_profile(user_id, ProfileUpdate(vector, "v1", "turn"))
        await store.apply_profile(ids[5], ProfileUpdate(-base, "v2", "turn"))  # other model
        found = await ops.neighbours(ids[0], k=3, batch=2)
        assert [n.user_id for n in found] == ids[1:4]
        assert found[0].similarity > found[1].similarity > found[2].similarity
    finally:
        await store.close()


def test_top_k_cosine() -> None:
    matrix = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=np.float32)
    best = top_k_cosine(np.array([1, 0.1], dtype=np.float32), matrix, 2)
    assert [i for i, _ in best] == [0, 2]


async def test_relabels_are_stored_for_training(db_url: str) -> None:
    store = Store.open(db_url)
    ops = OperatorStore(store)
    try:
        user = await store.upsert_user("default", "relabel-me")
        conv = await store.open_conversation(user.id, "chat")
        turn, _ = await store.add_user_turn(conv.id, user.id, "m1", "where is my refund")
        await store.apply_profile(user.id, ProfileUpdate(np.ones(4, np.float32), "v1", "turn"))
        await ops.relabel_turn(turn.id, "op1", intent="refund_not_showing")
        await ops.relabel_turn(turn.id, "op1", intent="pending_refund", emotion="sad")
        latest = await ops.list_label_corrections()
        assert [(c.field, c.new_value) for c in latest] == [
            ("intent", "pending_refund"),
            ("emotion", "sad"),
        ]
        assert all(c.text == "where is my refund" for c in latest)
        everything = await ops.list_label_corrections(latest_only=False)
        assert [c.old_value for c in everything] == [None, "refund_not_showing", None]
        stored = await ops.get_turn(turn.id)
        assert stored is not None and (stored.intent, stored.emotion) == ("pending_refund", "sad")
        view = await ops.profile_view(user.id)
        assert view is not None and (view.current_emotion, view.recent_intent) == (
            "sad",
            "pending_refund",
        )
    finally:
        await store.close()


# end to end


async def test_search_view_takeover_say_release(
    server: RunningServer, open_client: ClientFactory
) -> None:
    customer = await open_client()
    welcome = await customer.hello(user={"external_id": "cust-777", "name": "Ada Lovelace"})
    session_id, user_id = welcome["session_id"], welcome["user_id"]
    items = [{"id": "e1", "name": "payment_failed", "at": _now(), "props": {"amount": 12}}]
    await customer.send({"type": "events", "id": "b1", "items": items})
    assert (await customer.recv())["type"] == "ack"
    await _turn(customer, "m1", "My payment failed, my card is 4111 1111 1111 1111")

    key = await make_operator(server, "sam", "agent")
    async with operator_client(server, key) as agent:
        found = await agent.ok("profiles.search", q="ada")
        assert [i["id"] for i in found["items"]] == [user_id]
        assert found["items"][0]["emotion"] in SERVICE_EMOTIONS
        view = (await agent.ok("profile.get", user_id=user_id))["profile"]
        assert view["user"]["external_id"] == "cust-777"
        shares = view["modality_contributions"]
        assert set(shares) == {"text", "speech", "behaviour"}
        assert shares["text"] > 0 and shares["behaviour"] > 0
        assert len(view["contribution_trend"]) == 2
        assert view["events"][0]["name"] == "payment_failed"
        turns = view["conversations"][0]["turns"]
        assert [t["role"] for t in turns] == ["user", "assistant"]
        assert "4111" not in turns[0]["text"], "card numbers are redacted before storage"
        assert view["neighbours"] == []

        live = (await agent.ok("sessions.list"))["sessions"]
        assert [s["session_id"] for s in live] == [session_id]
        assert live[0]["status"] == "bot" and live[0]["waiting"] is False

        watched = await agent.ok("session.watch", session_id=session_id)
        assert [t["role"] for t in watched["turns"]] == ["user", "assistant"]
        await _turn(customer, "m2", "Are you still there?")
        user_turn = await agent.next_pushed("session.turn", session_id=session_id)
        assert user_turn["turn"]["role"] == "user"
        bot_turn = await agent.next_pushed("session.turn", session_id=session_id)
        assert bot_turn["turn"]["role"] == "assistant"

        taken = await agent.ok("session.takeover", session_id=session_id)
        assert taken["status"] == "operator"
        joined = await customer.recv()
        assert joined["type"] == "operator.joined" and joined["name"] == "sam"

        # The bot stays quiet: the user's message reaches the operator, not the assistant.
        await customer.send({"type": "message", "id": "m3", "text": "I want a human"})
        assert (await customer.recv())["type"] == "ack"
        heard = await agent.next_pushed("session.turn", session_id=session_id)
        assert heard["turn"]["role"] == "user" and heard["turn"]["text"] == "I want a human"

        await agent.ok("session.say", session_id=session_id, text="Hi Ada, Sam here.")
        said = await customer.recv()
        assert said["type"] == "operator.message" and said["text"] == "Hi Ada, Sam here."
        await customer.send({"type": "ping", "id": "p"})
        assert (await customer.recv())["type"] == "pong", "no bot reply while held"

        await agent.ok("session.release", session_id=session_id)
        assert (await customer.recv())["type"] == "operator.left"
        frames = await _turn(customer, "m4", "Thanks!")
        assert frames[-1]["type"] == "reply", "the bot answers again"

    store = server.runtime.store
    turns_now = await store.list_turns(session_id)
    roles = [t.role for t in turns_now]
    assert roles.count("operator") == 1 and "user" in roles
    conversation = await store.get_conversation(session_id)
    assert conversation is not None and conversation.status == "bot"
    audit = await server.runtime.operators.ops.list_audit(subject_user_id=user_id)
    actions = [a.action for a in audit]
    for action in ("profile.get", "session.watch", "session.takeover", "session.release"):
        assert action in actions, action
    for entry in audit:
        assert "Ada" not in json.dumps(entry.detail) and "human" not in json.dumps(entry.detail)


async def test_second_operator_cannot_grab_or_speak(
    server: RunningServer, open_client: ClientFactory
) -> None:
    customer = await open_client()
    session_id = (await customer.hello(user={"external_id": "contested"}))["session_id"]
    first = await make_operator(server, "first", "agent")
    second = await make_operator(server, "second", "agent")
    async with operator_client(server, first) as a, operator_client(server, second) as b:
        await a.ok("session.takeover", session_id=session_id)
        grabbed = await b.call("session.takeover", session_id=session_id)
        assert grabbed["type"] == "error" and grabbed["code"] == "conflict"
        spoke = await b.call("session.say", session_id=session_id, text="hi")
        assert spoke["code"] == "conflict"
        missing = await b.call("session.takeover", session_id="0" * 32)
        assert missing["code"] == "not_found"
    # The holder disconnected: the user is handed back to the bot.
    assert (await customer.recv())["type"] == "operator.joined"
    assert (await customer.recv())["type"] == "operator.left"


async def test_handoff_sessions_are_listed_first(
    server: RunningServer, open_client: ClientFactory
) -> None:
    from assistant.chat.protocol import Reply

    calm = await open_client()
    await calm.hello(user={"external_id": "calm"})
    upset = await open_client()
    upset_id = (await upset.hello(user={"external_id": "upset"}))["session_id"]
    await _turn(calm, "c1", "hello")  # calm is the most recent, but upset waits for a human
    handoff = Reply(turn_id="t", text="A person will help.", handoff=True)
    server.runtime.chat.sessions[upset_id].emit(handoff)
    key = await make_operator(server, "lister", "agent")
    async with operator_client(server, key) as agent:
        live = (await agent.ok("sessions.list"))["sessions"]
        assert live[0]["session_id"] == upset_id and live[0]["waiting"] is True


async def test_operator_mistakes_are_error_frames(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    key = await make_operator(server, "careful", "admin")
    async with operator_client(server, None) as anon:
        early = await anon.call("profile.get", user_id="0" * 32)
        assert early["code"] == "auth_required"
        await anon.send("{nope")
        assert (await anon.recv())["code"] == "invalid_json"
        await anon.ws.send(b"\x00")
        assert (await anon.recv())["code"] == "binary_not_supported"
        await anon.ok("auth", token=key)
        again = await anon.call("auth", token=key)
        assert again["code"] == "already_authenticated"
        cases: list[tuple[str, dict[str, Any], str]] = [
            ("dance", {}, "unknown_type"),
            ("profile.get", {"user_id": "x"}, "invalid_field"),
            ("profiles.search", {"limit": 1000}, "invalid_field"),
            ("profiles.search", {"cursor": "!!!"}, "invalid_field"),
            ("turn.relabel", {"turn_id": "0" * 32}, "invalid_field"),
            ("turn.relabel", {"turn_id": "0" * 32, "intent": "x"}, "not_found"),
            ("profile.get", {"user_id": "0" * 32}, "not_found"),
            ("session.say", {"session_id": "0" * 32, "text": "a" * 4001}, "text_too_long"),
            ("operators.revoke", {"name": "nobody"}, "not_found"),
        ]
        for frame_type, fields, code in cases:
            answer = await anon.call(frame_type, **fields)
            assert answer["type"] == "error" and answer["code"] == code, (frame_type, answer)
            assert answer["message"] and answer["ref"]
        await anon.send({"type": "ping", "id": "p1"})
        assert (await anon.recv())["type"] == "pong"
    assert not [r for r in caplog.records if r.exc_info], "client mistakes never log tracebacks"


@pytest.mark.parametrize("token", ["garbage", "csa_" + "0" * 32 + "_" + "A" * 43])
async def test_bad_key_is_refused_and_closed(server: RunningServer, token: str) -> None:
    async with operator_client(server, None) as client:
        answer = await client.call("auth", token=token)
        assert answer["type"] == "error" and answer["code"] == "unauthorized"
        with pytest.raises(ConnectionClosed) as closed:
            await client.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


async def test_revoked_key_is_refused(server: RunningServer) -> None:
    key = await make_operator(server, "leaver", "viewer")
    await server.runtime.operators.ops.revoke_operator("leaver")
    async with operator_client(server, None) as client:
        answer = await client.call("auth", token=key)
        assert answer["code"] == "unauthorized"


# the command line


def _cli(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASSISTANT_")}
    env["ASSISTANT_DB_URL"] = f"sqlite+aiosqlite:///{db}"
    return subprocess.run(
        [str(ASSISTANT), *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


async def test_cli_create_list_revoke(tmp_path: Path) -> None:
    db = tmp_path / "ops.db"
    assert _cli(db, "migrate").returncode == 0
    created = _cli(db, "operators", "create", "dana", "--role", "agent")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    parsed = parse_key(key)
    assert parsed is not None
    duplicate = _cli(db, "operators", "create", "dana", "--role", "admin")
    assert duplicate.returncode == 1 and "exists" in duplicate.stderr
    assert "Traceback" not in duplicate.stderr
    bad_role = _cli(db, "operators", "create", "eve", "--role", "root")
    assert bad_role.returncode == 2
    listed = _cli(db, "operators", "list")
    assert "dana\tagent" in listed.stdout and key not in listed.stdout
    assert parsed.secret not in db.read_bytes().decode("latin-1"), "only the hash is stored"
    store = Store.open(f"sqlite+aiosqlite:///{db}")
    try:
        operator = await OperatorStore(store).get_operator(parsed.operator_id)
        assert operator is not None and verify_secret(parsed.secret, operator.key_hash)
    finally:
        await store.close()
    revoked = _cli(db, "operators", "revoke", "dana")
    assert revoked.returncode == 0
    assert "revoked" in _cli(db, "operators", "list").stdout
    assert _cli(db, "operators", "revoke", "ghost").returncode == 1
