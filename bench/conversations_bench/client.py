"""One conversation through the chat protocol, as a customer who waits for each reply."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from common import BenchError
from websockets.asyncio.client import ClientConnection, connect

from conversations_bench.script import Conversation, Turn

__all__ = ["FRAME_TIMEOUT_S", "Outcome", "converse"]

FRAME_TIMEOUT_S = 120.0


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the server made of one turn."""

    kind: str
    topic: str
    label: str | None  # reply.intent.label: the intent the reply is grounded in
    handoff: bool
    turn: str | None  # reply.turn: new_topic, follow_up or clarification (absent: None)
    suggestions: int

    @classmethod
    def of(cls, turn: Turn, reply: dict[str, Any]) -> Outcome:
        intent = reply.get("intent") or {}
        return cls(
            kind=turn.kind,
            topic=turn.topic,
            label=intent.get("label"),
            handoff=bool(reply.get("handoff")),
            turn=reply.get("turn"),
            suggestions=len(reply.get("suggestions") or ()),
        )

    @property
    def asked(self) -> bool:
        return self.turn == "clarification"

    @property
    def recognised(self) -> bool:
        """Grounded in the turn's topic, and no question instead of an answer."""
        return self.label == self.topic and not self.asked

    @property
    def in_topic(self) -> bool:
        """A follow-up answered within the topic by the bot itself."""
        return self.recognised and not self.handoff


async def _frame(ws: ClientConnection, kinds: tuple[str, ...]) -> dict[str, Any]:
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), FRAME_TIMEOUT_S))
        if frame["type"] == "error":
            raise BenchError(f"the server answered an error: {frame}")
        if frame["type"] in kinds:
            return dict(frame)


async def converse(url: str, user: str, conversation: Conversation) -> list[Outcome]:
    """Say the conversation's turns on a new session of user `user`, each after the reply
    to the one before."""
    async with connect(url + "/chat", max_size=None) as ws:
        await ws.send(json.dumps({"type": "hello", "user": {"external_id": user}}))
        await _frame(ws, ("welcome",))
        outcomes = []
        for n, turn in enumerate(conversation.turns):
            await ws.send(json.dumps({"type": "message", "id": f"m{n}", "text": turn.text}))
            outcomes.append(Outcome.of(turn, await _frame(ws, ("reply",))))
        return outcomes
