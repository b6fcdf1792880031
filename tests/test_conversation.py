"""Conversation intents end to end: a real server on port 0 and a real websockets client.

A greeting or thanks is a label of its own, is never a turn "not understood", and does not
change how the next clear message is read (assistant/replies/conversation.py,
fusion/profile_update.py `conditions_heads`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from tests.conftest import Client, ClientFactory

pytestmark = pytest.mark.asyncio

CLEAR = "My card was declined at the supermarket just now"


async def _say(client: Client, message_id: str, text: str) -> dict[str, Any]:
    await client.send({"type": "message", "id": message_id, "text": text})
    reply = (await client.recv_until("reply"))[-1]
    return reply


async def test_greeting_then_a_clear_question_gives_the_right_intent_and_no_handoff(
    open_client: ClientFactory,
) -> None:
    first = await open_client()
    await first.hello(user={"external_id": "first-message"})
    alone = await _say(first, "a1", CLEAR)
    assert alone["intent"]["label"] == "declined_card_payment"

    client = await open_client()
    await client.hello(user={"external_id": "greets-first"})
    greeting = await _say(client, "g1", "Hello")
    assert greeting["intent"]["label"] == "greeting"
    assert greeting["handoff"] is False
    reply = await _say(client, "g2", CLEAR)
    assert reply["intent"]["label"] == "declined_card_payment"
    assert reply["handoff"] is False
    # A profile of the greeting's words alone does not condition the heads: the message reads
    # exactly as it does first in a conversation.
    assert reply["intent"]["confidence"] == pytest.approx(alone["intent"]["confidence"], abs=1e-6)


async def test_a_greeting_and_thanks_carry_their_own_intent(open_client: ClientFactory) -> None:
    client = await open_client()
    await client.hello(user={"external_id": "polite"})
    greeting = await _say(client, "p1", "Hi there")
    assert greeting["intent"]["label"] == "greeting"
    assert 0.0 <= greeting["intent"]["confidence"] <= 1.0
    assert "help" in greeting["text"]
    thanks = await _say(client, "p2", "Thank you")
    assert thanks["intent"]["label"] == "thanks"
    assert thanks["handoff"] is False
    assert "welcome" in thanks["text"].lower()
    # Two conversation turns in a row are no streak of turns not understood.
    bye = await _say(client, "p3", "Goodbye")
    assert bye["intent"]["label"] == "goodbye"
    assert bye["handoff"] is False


async def test_after_a_payment_failed_event_the_profile_still_conditions(
    open_client: ClientFactory,
) -> None:
    client = await open_client()
    await client.hello(user={"external_id": "declined-at-checkout"})
    event = {
        "type": "event",
        "id": "e1",
        "name": "payment_failed",
        "at": datetime.now(UTC).isoformat(),
        "props": {"reason": "declined", "payment_method": "card"},
    }
    await client.send(event)
    await client.recv_until("ack")
    reply = await _say(client, "m1", CLEAR)
    assert reply["intent"]["label"] == "declined_card_payment"
    assert reply["handoff"] is False
