"""What replicas say to each other over Redis: typed messages and their JSON, no I/O.

`decode_message` never raises: a message from a newer or broken peer becomes None and is
dropped by the reader.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

# takeover / say / release: an operator on another replica acting on a session held here;
# handover: the session's client reconnected to another replica, which takes it over;
# end_user: the user is being erased, end their sessions everywhere.
Action = Literal["takeover", "say", "release", "handover", "end_user"]
ACTIONS: frozenset[str] = frozenset(get_args(Action))


@dataclass(frozen=True, slots=True)
class Call:
    """A command for the replica holding a session; answered on the `origin`'s channel."""

    id: str
    origin: str
    action: Action
    session_id: str | None = None
    user_id: str | None = None
    operator_id: str | None = None
    operator_name: str | None = None
    role: str | None = None
    text: str | None = None


@dataclass(frozen=True, slots=True)
class Answer:
    """The outcome of a Call: `data` on success, else an /operator error code and message."""

    id: str
    data: dict[str, Any] | None = None
    code: str | None = None
    message: str | None = None


@dataclass(frozen=True, slots=True)
class LiveFrame:
    """An /operator frame (without seq) about a session, for the operators watching it."""

    origin: str
    session_id: str
    frame: dict[str, Any]


@dataclass(frozen=True, slots=True)
class SessionSnapshot:
    """What a chat session needs to continue on another replica: its replay log and state."""

    session_id: str
    user_id: str
    seq: int
    frames: tuple[tuple[int, str], ...]  # (seq, serialized frame), oldest first
    operator_id: str | None = None
    operator_name: str | None = None
    waiting: bool = False
    intent: str | None = None
    emotion: str | None = None


def encode_message(message: Call | Answer) -> str:
    kind = "call" if isinstance(message, Call) else "answer"
    return json.dumps({"kind": kind, **asdict(message)}, ensure_ascii=False)


def decode_message(raw: bytes | str) -> Call | Answer | None:
    try:
        data = json.loads(raw)
        kind = data.pop("kind")
        if kind == "call" and data.get("action") in ACTIONS:
            return Call(**data)
        if kind == "answer":
            return Answer(**data)
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    return None


def encode_live(live: LiveFrame) -> str:
    return json.dumps(asdict(live), ensure_ascii=False)


def decode_live(raw: bytes | str) -> LiveFrame | None:
    try:
        data = json.loads(raw)
        live = LiveFrame(**data)
    except (ValueError, TypeError):
        return None
    return live if isinstance(live.frame, dict) else None


def encode_snapshot(snapshot: SessionSnapshot) -> str:
    return json.dumps(asdict(snapshot), ensure_ascii=False)


def decode_snapshot(raw: bytes | str) -> SessionSnapshot | None:
    try:
        data = json.loads(raw)
        data["frames"] = tuple((int(seq), str(text)) for seq, text in data["frames"])
        return SessionSnapshot(**data)
    except (ValueError, TypeError, KeyError):
        return None
