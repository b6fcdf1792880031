"""A customer waiting for a person is never left in silence (assistant.replies.waiting).

The policy on its own, then end to end on a real server with real clients: with nobody
online the waiting customer is told so at once, with an operator online that someone is
coming; during a take-over each message visibly reaches the operator; the customer can go
back to the bot; and every message gets its answer.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from assistant.replies.waiting import (
    BACK_TO_BOT,
    WaitingState,
    WaitStatus,
    asks_for_bot,
    handoff_notice,
    waiting_reply,
)
from server import RunningServer
from tests.conftest import Client, ClientFactory, ServerFactory
from tests.support.databases import temporary_redis_prefix
from tests.support.operator_helpers import make_operator, operator_client

# How soon a waiting customer hears where they stand: the receive timeout of that frame.
WAITING_REPLY_S = 1.0
ASK_FOR_PERSON = "I want to talk to a real person"


# the policy


@pytest.mark.parametrize(
    ("text", "wanted"),
    [
        ("back to the bot", True),
        ("Can I go back to the assistant?", True),
        ("ok, I'll talk to the bot then", True),
        ("let me continue with the assistant", True),
        ("never mind", True),
        ("Bot please", True),
        ("I don't want the bot", False),
        ("no, not the assistant, a person", False),
        ("my card is not working", False),
        ("I need to send money back to my friend", False),
        ("is anyone there?", False),
    ],
)
def test_asks_for_bot(text: str, wanted: bool) -> None:
    assert asks_for_bot(text) is wanted


def test_the_status_is_said_once_then_short_acknowledgements() -> None:
    state, notice = handoff_notice(False, "chat")
    assert notice.status is WaitStatus.NOBODY_ONLINE and "back to the bot" in notice.text
    texts = []
    for _ in range(4):
        state, reply = waiting_reply(state, False, "chat")
        assert reply.status is WaitStatus.NOBODY_ONLINE
        texts.append(reply.text)
    assert notice.text not in texts, "the full status is not said twice in a row"
    assert all(len(t) < len(notice.text) for t in texts)
    assert texts[0] != texts[1], "consecutive acknowledgements differ"
    # Someone signs in: the customer is told the new status in full, once.
    state, coming = waiting_reply(state, True, "chat")
    assert coming.status is WaitStatus.OPERATOR_COMING and "online" in coming.text
    state, again = waiting_reply(state, True, "chat")
    assert again.text != coming.text and again.status is WaitStatus.OPERATOR_COMING


def test_a_call_hears_phone_wording() -> None:
    for online in (False, True):
        _, said = handoff_notice(online, "voice")
        _, written = handoff_notice(online, "chat")
        assert said.text != written.text and "writ" not in said.text
    assert "call" in handoff_notice(False, "voice")[1].text
    assert "line" in handoff_notice(True, "voice")[1].text
    _, first = waiting_reply(WaitingState(), False, "voice")
    assert first.text == handoff_notice(False, "voice")[1].text


# end to end


async def _say(client: Client, message_id: str, text: str) -> list[dict[str, Any]]:
    await client.send({"type": "message", "id": message_id, "text": text})
    return await client.recv_until("reply")


async def _handed_off(client: Client, external_id: str) -> tuple[str, dict[str, Any]]:
    """A customer whose conversation now waits for a person; their session id and the
    handoff reply."""
    session_id = (await client.hello(user={"external_id": external_id}))["session_id"]
    reply = (await _say(client, "h1", ASK_FOR_PERSON))[-1]
    assert reply["handoff"] is True, reply
    return session_id, reply


async def test_with_nobody_online_the_customer_is_told_so_at_once(
    server: RunningServer, open_client: ClientFactory
) -> None:
    customer = await open_client()
    session_id, handoff = await _handed_off(customer, "alone")
    assert handoff["waiting"] == "nobody_online"
    assert "Nobody from our team is online" in handoff["text"]

    # The next message: acked, then a reply saying where the customer stands.
    await customer.send({"type": "message", "id": "w1", "text": "Hello? Is anyone there?"})
    frames = await asyncio.wait_for(customer.recv_until("reply"), WAITING_REPLY_S)
    ack, reply = frames[0], frames[-1]
    assert ack == {"type": "ack", "seq": ack["seq"], "id": "w1"}
    assert reply["handoff"] is True and reply["waiting"] == "nobody_online"
    assert reply["text"] and reply["text"] not in handoff["text"], "said once, then short"
    assert "".join(f["text"] for f in frames if f["type"] == "reply.delta") == reply["text"]

    again = (await _say(customer, "w2", "I'll wait"))[-1]
    assert again["waiting"] == "nobody_online" and again["text"] != reply["text"]

    session = server.runtime.chat.sessions[session_id]
    assert session.waiting_for_operator
    # What the customer was told is part of the conversation, for whoever picks it up.
    await session.settle()
    turns = await server.runtime.store.list_turns(session_id)
    told = [t.text for t in turns if t.role == "assistant"]
    assert told == [handoff["text"], reply["text"], again["text"]]


async def test_with_an_operator_online_someone_is_coming(
    server: RunningServer, open_client: ClientFactory
) -> None:
    customer = await open_client()
    # A viewer cannot take a conversation over: nobody who could come is online.
    viewer = await make_operator(server, "vera", "viewer")
    async with operator_client(server, viewer):
        _, handoff = await _handed_off(customer, "hopeful")
        assert handoff["waiting"] == "nobody_online"
        key = await make_operator(server, "sam", "agent")
        async with operator_client(server, key):
            # An agent signed in: the customer hears, in full, that someone is coming.
            coming = (await _say(customer, "w1", "Still waiting"))[-1]
            assert coming["waiting"] == "operator_coming" and coming["handoff"] is True
            assert "will join this chat" in coming["text"]
            short = (await _say(customer, "w2", "ok"))[-1]
            assert short["waiting"] == "operator_coming" and short["text"] != coming["text"]
        # The agent signed out again.
        gone = (await _say(customer, "w3", "hello?"))[-1]
        assert gone["waiting"] == "nobody_online" and "Nobody" in gone["text"]

    key = await make_operator(server, "kim", "admin")
    async with operator_client(server, key):
        other = await open_client()
        _, first = await _handed_off(other, "lucky")
        assert first["waiting"] == "operator_coming"
        assert "will join this chat" in first["text"]


async def test_during_a_take_over_each_message_reaches_the_operator(
    server: RunningServer, open_client: ClientFactory
) -> None:
    customer = await open_client()
    session_id, _ = await _handed_off(customer, "held")
    key = await make_operator(server, "sam", "agent")
    async with operator_client(server, key) as agent:
        await agent.ok("session.takeover", session_id=session_id)
        joined = await customer.recv()
        assert joined["type"] == "operator.joined" and joined["name"] == "sam"

        await customer.send({"type": "message", "id": "t1", "text": "My card was stolen"})
        ack = await customer.recv()
        assert ack["type"] == "ack" and ack["id"] == "t1"
        assert ack["delivered_to"] == "operator", "the customer sees it reached a person"
        heard = await agent.next_pushed("session.turn", session_id=session_id)
        assert heard["turn"]["role"] == "user" and heard["turn"]["text"] == "My card was stolen"

        await agent.ok("session.say", session_id=session_id, text="Sam here, freezing it now.")
        said = await customer.recv()
        assert said["type"] == "operator.message"
        # No bot reply while a person holds the conversation.
        await customer.send({"type": "ping", "id": "p"})
        assert (await customer.recv())["type"] == "pong"

        await agent.ok("session.release", session_id=session_id)
        assert (await customer.recv())["type"] == "operator.left"
    answered = (await _say(customer, "t2", "Thanks! How do I order a new card?"))[-1]
    assert answered["handoff"] is False and "waiting" not in answered
    plain = [f for f in await _say(customer, "t3", "thanks") if f["type"] == "ack"]
    assert "delivered_to" not in plain[0], "the bot holds the conversation again"


async def test_a_message_queued_when_a_person_takes_over_is_delivered_to_them(
    server: RunningServer, open_client: ClientFactory
) -> None:
    """A message acked for the bot while it was still answering the one before, then a
    take-over: the bot never answers it, so the customer is told a person has it."""
    customer = await open_client()
    welcome = await customer.hello(user={"external_id": "racing"})
    session_id, user_id = welcome["session_id"], welcome["user_id"]
    # The first turn's write waits for this user's lock: the bot is still busy with it when
    # the second message is acked and the operator takes over.
    lock = server.runtime.chat.user_lock(user_id)
    await lock.acquire()
    try:
        first = await _say(customer, "r1", "My card was declined at the supermarket")
        assert first[-1]["intent"]["label"] == "declined_card_payment"
        await customer.send({"type": "message", "id": "r2", "text": "Are you still there?"})
        ack = await customer.recv()
        assert ack == {"type": "ack", "seq": ack["seq"], "id": "r2"}, "acked for the bot"
        key = await make_operator(server, "quick", "agent")
        async with operator_client(server, key) as agent:
            await agent.ok("session.takeover", session_id=session_id)
            assert (await customer.recv())["type"] == "operator.joined"
            lock.release()
            again = await customer.recv()
            assert again["type"] == "ack" and again["id"] == "r2"
            assert again["delivered_to"] == "operator"
            await customer.send({"type": "ping", "id": "p"})
            assert (await customer.recv())["type"] == "pong", "and no bot reply to it"
    finally:
        if lock.locked():
            lock.release()


async def test_the_customer_can_go_back_to_the_bot(
    server: RunningServer, open_client: ClientFactory
) -> None:
    customer = await open_client()
    session_id, _ = await _handed_off(customer, "impatient")
    back = (await _say(customer, "b1", "never mind, back to the bot"))[-1]
    assert back["text"] == BACK_TO_BOT
    assert back["handoff"] is False and "waiting" not in back
    assert not server.runtime.chat.sessions[session_id].waiting_for_operator
    key = await make_operator(server, "lister", "agent")
    async with operator_client(server, key) as agent:
        listed = (await agent.ok("sessions.list"))["sessions"]
        assert [s["waiting"] for s in listed if s["session_id"] == session_id] == [False]
    # The bot answers questions again.
    answer = (await _say(customer, "b2", "I still haven't received my new card"))[-1]
    assert answer["handoff"] is False and "waiting" not in answer
    assert answer["intent"]["label"] == "card_arrival"


async def test_no_message_is_left_unanswered(
    server: RunningServer, open_client: ClientFactory
) -> None:
    customer = await open_client()
    session_id, _ = await _handed_off(customer, "chatty")
    ids = [f"q{i}" for i in range(4)]
    for message_id in ids:  # without waiting for replies in between
        await customer.send({"type": "message", "id": message_id, "text": f"note {message_id}"})
    frames: list[dict[str, Any]] = []
    while sum(f["type"] == "reply" for f in frames) < len(ids):
        frames.append(await customer.recv())
    assert [f["id"] for f in frames if f["type"] == "ack"] == ids
    replies = [f for f in frames if f["type"] == "reply"]
    assert all(r["waiting"] == "nobody_online" and r["text"] for r in replies)
    await server.runtime.chat.sessions[session_id].settle()
    turns = await server.runtime.store.list_turns(session_id)
    user_turns = [t.id for t in turns if t.role == "user"]
    assert [r["turn_id"] for r in replies] == user_turns[1:], "one reply per message, in order"
    assert sum(t.role == "assistant" for t in turns) == len(user_turns)
    await customer.send({"type": "ping", "id": "p"})
    assert (await customer.recv())["type"] == "pong", "and nothing more"


async def _sees_operators(srv: RunningServer, online: bool) -> None:
    """Until `srv` counts an operator online (or none), once presence has spread."""
    for _ in range(200):
        if await srv.runtime.operators.operators_online() is online:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"replica never saw operators online = {online}")


async def test_an_operator_on_another_replica_is_coming(
    start_server: ServerFactory, open_client: ClientFactory
) -> None:
    url = os.environ.get("ASSISTANT_TEST_REDIS_URL")
    if not url:
        pytest.skip("needs Redis: set ASSISTANT_TEST_REDIS_URL")
    async with (
        temporary_redis_prefix(url) as prefix,
        start_server(redis_url=url, redis_prefix=prefix) as a,
        start_server(redis_url=url, redis_prefix=prefix) as b,
    ):
        customer = await open_client(url=a.url)
        await customer.hello(user={"external_id": "far-away"})
        key = await make_operator(b, "remote", "agent")
        async with operator_client(b, key):
            await _sees_operators(a, True)
            handoff = (await _say(customer, "h1", ASK_FOR_PERSON))[-1]
            assert handoff["handoff"] is True and handoff["waiting"] == "operator_coming"
        await _sees_operators(a, False)
        alone = (await _say(customer, "w1", "anyone?"))[-1]
        assert alone["waiting"] == "nobody_online"
