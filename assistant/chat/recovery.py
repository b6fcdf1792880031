"""What a restarted server owes a session that nobody holds any more: pure, no I/O.

The frame journal holds every frame the session sent (assistant/chat/journal.py); the database
holds every message that was acked. A message whose turn was being answered when the server
stopped (or was killed) has neither a reply frame nor a failure frame nor labels: it is
answered again after the restart.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from assistant.chat.protocol import ErrorCode
from profiles import StoredFrame, TurnRecord

# Errors that end a turn of an acked message: it is not answered again.
TURN_FAILURES = frozenset({ErrorCode.OVERLOADED, ErrorCode.UNAVAILABLE, ErrorCode.INTERNAL})


def _outcomes(frames: Sequence[StoredFrame]) -> tuple[set[str], set[str]]:
    """Turn ids that got a reply, and client ids whose acked message failed, per the frames."""
    replied: set[str] = set()
    failed: set[str] = set()
    acked: set[str] = set()
    for frame in frames:
        data = json.loads(frame.body)
        kind = data.get("type")
        if kind == "reply":
            replied.add(str(data["turn_id"]))
        elif kind == "ack" and isinstance(data.get("id"), str) and _acks_a_turn(data):
            acked.add(data["id"])
        elif kind == "error" and data.get("ref") in acked and data.get("code") in TURN_FAILURES:
            # An error before the ack refused the frame itself; one after it ended the turn.
            failed.add(data["ref"])
    return replied, failed


def _acks_a_turn(ack: dict[str, object]) -> bool:
    """A voice note's parts are acked as they are held, before the note is a turn: only its
    last part's ack (with the transcript) says that the turn is stored."""
    return "part" not in ack or "transcript" in ack


def unanswered(turns: Sequence[TurnRecord], frames: Sequence[StoredFrame]) -> list[TurnRecord]:
    """The user turns, oldest first, that were still waiting for an answer.

    Turns are answered in order, so only those after the last turn with an outcome (a reply,
    a failure, or labels from a turn answered without a reply) can be waiting.
    """
    replied, failed = _outcomes(frames)
    said = [t for t in turns if t.role == "user"]

    def settled(turn: TurnRecord) -> bool:
        return turn.intent is not None or turn.id in replied or turn.client_id in failed

    last = max((i for i, turn in enumerate(said) if settled(turn)), default=-1)
    return [turn for turn in said[last + 1 :] if not settled(turn)]
