"""The dialogue state end to end: a real server on port 0, a real websockets client.

Follow-ups are read within the conversation's topic and a clear new request switches it
(assistant/replies/dialogue.py); an ambiguous message gets a clarifying question whose
suggestions answer it; the state is stored with the turn, so a new session after a restart
carries on, and operators see it; `ASSISTANT_DIALOGUE=off` reads every message alone.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from websockets.asyncio.client import connect

from assistant.replies.dialogue import DialogueConfig
from assistant.replies.knowledge_base import load_knowledge_base
from tests.conftest import Client, ClientFactory, ServerFactory
from tests.support.operator_helpers import make_operator, operator_client

pytestmark = pytest.mark.asyncio

KB = load_knowledge_base()
DECLINED = "my card was declined"
WHY = "why would that be"
# The heads split this one between a card payment's fee and an unexpected charge.
AMBIGUOUS = "I was charged extra"


async def _say(client: Client, message_id: str, text: str) -> dict[str, Any]:
    await client.send({"type": "message", "id": message_id, "text": text})
    reply = (await client.recv_until("reply"))[-1]
    assert reply["type"] == "reply"
    return reply


async def _settle(client: Client, message_id: str) -> dict[str, Any]:
    """Until the turns answered so far are stored: a session answers its next message only
    after the turn before has committed, and a greeting leaves the dialogue state as it is."""
    greeting = await _say(client, message_id, "Hello")
    assert greeting["intent"]["label"] == "greeting" and "turn" not in greeting
    return greeting


def _answer_of(intent: str) -> str:
    """The first sentence of the knowledge base's answer for `intent`, as replies quote it."""
    entry = KB.for_intent(intent)
    assert entry is not None
    return entry.answer.split(". ")[0]


async def test_a_follow_up_stays_on_the_topic_and_a_new_request_switches_it(
    open_client: ClientFactory,
) -> None:
    client = await open_client()
    await client.hello(user={"external_id": "follows-up"})
    first = await _say(client, "d1", DECLINED)
    assert first["intent"]["label"] == "declined_card_payment"
    assert first["turn"] == "new_topic"
    assert "suggestions" not in first

    follow = await _say(client, "d2", WHY)
    assert follow["turn"] == "follow_up"
    assert follow["intent"]["label"] == "declined_card_payment"
    assert follow["intent"]["confidence"] == pytest.approx(first["intent"]["confidence"], abs=1e-4)
    assert _answer_of("declined_card_payment") in follow["text"]
    assert follow["handoff"] is False

    switch = await _say(client, "d3", "I want to change my PIN")
    assert switch["turn"] == "new_topic"
    assert switch["intent"]["label"] == "change_pin"
    assert _answer_of("change_pin") in switch["text"]


async def test_follow_ups_the_heads_call_out_of_scope_are_understood_not_handed_off(
    open_client: ClientFactory,
) -> None:
    """Two messages in a row that the heads alone read as out of scope would hand the
    conversation to a person; read within the topic, they are answered."""
    client = await open_client()
    await client.hello(user={"external_id": "no-streak"})
    await _say(client, "s1", DECLINED)
    for n, text in enumerate(
        (WHY, "This is the second time today, I'm getting really annoyed", "is that normal?")
    ):
        reply = await _say(client, f"s{n + 2}", text)
        assert reply["turn"] == "follow_up", (text, reply)
        assert reply["intent"]["label"] == "declined_card_payment"
        assert reply["handoff"] is False


async def test_a_greeting_neither_sets_nor_clears_the_topic(open_client: ClientFactory) -> None:
    client = await open_client()
    await client.hello(user={"external_id": "polite-topic"})
    await _say(client, "g1", DECLINED)
    thanks = await _say(client, "g2", "Thank you")
    assert thanks["intent"]["label"] == "thanks"
    assert "turn" not in thanks
    follow = await _say(client, "g3", "and what if it happens again?")
    assert (follow["turn"], follow["intent"]["label"]) == ("follow_up", "declined_card_payment")


async def test_an_ambiguous_message_gets_a_question_and_a_suggestion_answers_it(
    open_client: ClientFactory,
) -> None:
    client = await open_client()
    await client.hello(user={"external_id": "torn"})
    asked = await _say(client, "a1", AMBIGUOUS)
    assert asked["turn"] == "clarification"
    suggestions = asked["suggestions"]
    assert 2 <= len(suggestions) <= 3
    offered = {"card_payment_fee_charged", "extra_charge_on_statement"}
    titles = {KB.for_intent(i).title for i in offered}  # type: ignore[union-attr]
    assert {s.lower() for s in suggestions} == {t.lower() for t in titles}
    # The question names each choice and answers neither.
    for title in titles:
        assert title in asked["text"]
    for intent in offered:
        assert _answer_of(intent) not in asked["text"]

    chosen = next(
        s
        for s in suggestions
        if s.lower() == KB.for_intent("extra_charge_on_statement").title  # type: ignore[union-attr]
    )
    answer = await _say(client, "a2", chosen)
    assert answer["intent"] == {"label": "extra_charge_on_statement", "confidence": 1.0}
    assert answer["turn"] == "new_topic"
    assert "suggestions" not in answer
    assert _answer_of("extra_charge_on_statement") in answer["text"]
    # The choice set the topic: a follow-up now stays on it.
    follow = await _say(client, "a3", "how long will that take")
    assert (follow["turn"], follow["intent"]["label"]) == ("follow_up", "extra_charge_on_statement")


async def test_a_question_is_answered_by_naming_a_choice_by_its_place(
    open_client: ClientFactory,
) -> None:
    client = await open_client()
    await client.hello(user={"external_id": "picks-first"})
    asked = await _say(client, "o1", AMBIGUOUS)
    assert asked["turn"] == "clarification"
    first = asked["suggestions"][0]
    answer = await _say(client, "o2", "the first one")
    assert answer["turn"] == "new_topic"
    assert KB.for_intent(answer["intent"]["label"]).title.lower() == first.lower()  # type: ignore[union-attr]


async def test_the_dialogue_state_survives_a_restart_and_operators_see_it(
    start_server: ServerFactory,
) -> None:
    occurred = datetime.now(UTC).isoformat()
    async with start_server() as first, connect(first.url + "/chat") as ws:
        client = Client(ws)
        welcome = await client.hello(user={"external_id": "comes-back", "name": "Ada Back"})
        await client.send(
            {
                "type": "event",
                "id": "pf-1",
                "name": "payment_failed",
                "at": occurred,
                "props": {"merchant": "FreshMart", "amount": 42.5, "currency": "EUR"},
            }
        )
        await client.recv_until("ack")
        opened = await _say(client, "r1", "My card payment was declined at the supermarket")
        assert opened["turn"] == "new_topic"
        last_seq = (await _settle(client, "r-hello"))["seq"]
        session_id = welcome["session_id"]
        stored = await first.runtime.store.get_conversation(session_id)
        assert stored is not None and stored.dialogue_state is not None
        assert stored.dialogue_state["topic"] == "declined_card_payment"

    async with start_server() as second, connect(second.url + "/chat") as ws:
        client = Client(ws)
        resumed = await client.hello(
            user={"external_id": "comes-back"}, session_id=session_id, last_seq=last_seq
        )
        assert resumed["resumed"] is True
        follow = await _say(client, "r2", WHY)
        assert follow["turn"] == "follow_up"
        assert follow["intent"]["label"] == "declined_card_payment"
        await _settle(client, "r-hello-again")

        key = await make_operator(second, "dee-agent", "agent")
        async with operator_client(second, key) as agent:
            watched = await agent.ok("session.watch", session_id=session_id)
            state = watched["dialogue_state"]
            assert state["topic"] == "declined_card_payment"
            assert state["turns_on_topic"] == 2
            assert state["open_question"] is None
            assert state["details"]["merchant"] == "FreshMart"
            assert float(state["details"]["amount"]) == 42.5
            answer = await agent.ok("profile.get", user_id=resumed["user_id"])
            conversation = next(
                c for c in answer["profile"]["conversations"] if c["id"] == session_id
            )
            assert conversation["dialogue_state"] == state


async def test_the_open_question_is_stored_and_shown_to_operators(
    open_client: ClientFactory, server: Any
) -> None:
    client = await open_client()
    welcome = await client.hello(user={"external_id": "asked-and-watched"})
    asked = await _say(client, "q1", AMBIGUOUS)
    await _settle(client, "q-hello")
    key = await make_operator(server, "quinn-agent", "agent")
    async with operator_client(server, key) as agent:
        watched = await agent.ok("session.watch", session_id=welcome["session_id"])
    question = watched["dialogue_state"]["open_question"]
    assert [c["suggestion"] for c in question["choices"]] == asked["suggestions"]
    assert watched["dialogue_state"]["topic"] is None


async def test_with_the_dialogue_off_each_message_is_read_alone(
    start_server: ServerFactory,
) -> None:
    async with (
        start_server(dialogue=DialogueConfig(enabled=False)) as srv,
        connect(srv.url + "/chat") as ws,
    ):
        client = Client(ws)
        welcome = await client.hello(user={"external_id": "alone"})
        first = await _say(client, "f1", DECLINED)
        assert first["intent"]["label"] == "declined_card_payment"
        follow = await _say(client, "f2", WHY)
        assert follow["intent"]["label"] == "out_of_scope"
        asked = await _say(client, "f3", AMBIGUOUS)
        for reply in (first, follow, asked):
            assert "turn" not in reply and "suggestions" not in reply
        await _say(client, "f4", "Hello")
        stored = await srv.runtime.store.get_conversation(welcome["session_id"])
        assert stored is not None and stored.dialogue_state is None
