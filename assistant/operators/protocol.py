"""The /operator wire protocol: pure parsing and serialization, no I/O.

`parse_operator_frame` turns one text frame into a typed command or an `OperatorError`; it
never raises. Every command carries an `id`, answered by `result {ref, ...}` or
`error {code, message, ref}`. docs/operators.md documents every frame; tests parse its
examples with this module.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, StringConstraints, model_validator

from assistant.core.wire import (
    MAX_TEXT_CHARS,
    Frame,
    FrameId,
    HexId,
    Ping,
    Pong,
    Refused,
    Timestamp,
    WireError,
    WireErrorFrame,
    dumps,
    frame_fields,
    read_frame,
)

MAX_SEARCH_LIMIT = 100


class OperatorErrorCode(StrEnum):
    INVALID_JSON = "invalid_json"
    INVALID_FRAME = "invalid_frame"
    UNKNOWN_TYPE = "unknown_type"
    INVALID_FIELD = "invalid_field"
    TEXT_TOO_LONG = "text_too_long"
    BINARY_NOT_SUPPORTED = "binary_not_supported"
    AUTH_REQUIRED = "auth_required"
    ALREADY_AUTHENTICATED = "already_authenticated"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    UNAVAILABLE = "unavailable"
    RATE_LIMITED = "rate_limited"
    INTERNAL = "internal"


class OperatorError(WireError[OperatorErrorCode]):
    __slots__ = ()


Label = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Filter = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class Auth(Frame):
    type: Literal["auth"]
    id: FrameId | None = None
    token: Annotated[str, StringConstraints(min_length=1, max_length=512)]


class Search(Frame):
    type: Literal["profiles.search"]
    id: FrameId
    q: Filter | None = None
    emotion: Label | None = None
    intent: Label | None = None
    seen_after: Timestamp | None = None
    seen_before: Timestamp | None = None
    limit: Annotated[int, Field(ge=1, le=MAX_SEARCH_LIMIT)] = 20
    cursor: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None


class ProfileGet(Frame):
    type: Literal["profile.get"]
    id: FrameId
    user_id: HexId


class ProfileExport(Frame):
    type: Literal["profile.export"]
    id: FrameId
    user_id: HexId


class ProfileErase(Frame):
    type: Literal["profile.erase"]
    id: FrameId
    user_id: HexId


class SessionsList(Frame):
    type: Literal["sessions.list"]
    id: FrameId


class SessionWatch(Frame):
    type: Literal["session.watch"]
    id: FrameId
    session_id: HexId


class SessionUnwatch(Frame):
    type: Literal["session.unwatch"]
    id: FrameId
    session_id: HexId


class SessionTakeover(Frame):
    type: Literal["session.takeover"]
    id: FrameId
    session_id: HexId


class SessionSay(Frame):
    type: Literal["session.say"]
    id: FrameId
    session_id: HexId
    text: Annotated[str, StringConstraints(min_length=1)]


class SessionRelease(Frame):
    type: Literal["session.release"]
    id: FrameId
    session_id: HexId


class TurnRelabel(Frame):
    type: Literal["turn.relabel"]
    id: FrameId
    turn_id: HexId
    intent: Label | None = None
    emotion: Label | None = None

    @model_validator(mode="after")
    def _something(self) -> TurnRelabel:
        if self.intent is None and self.emotion is None:
            raise ValueError("give intent, emotion or both")
        return self


class OperatorsList(Frame):
    type: Literal["operators.list"]
    id: FrameId


class OperatorsCreate(Frame):
    type: Literal["operators.create"]
    id: FrameId
    name: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    role: Literal["viewer", "agent", "admin"]


class OperatorsRevoke(Frame):
    type: Literal["operators.revoke"]
    id: FrameId
    name: Annotated[str, StringConstraints(min_length=1, max_length=100)]


Command = (
    Search
    | ProfileGet
    | ProfileExport
    | ProfileErase
    | SessionsList
    | SessionWatch
    | SessionUnwatch
    | SessionTakeover
    | SessionSay
    | SessionRelease
    | TurnRelabel
    | OperatorsList
    | OperatorsCreate
    | OperatorsRevoke
)
OperatorFrame = Auth | Ping | Command

_TYPES: dict[str, type[OperatorFrame]] = {
    "auth": Auth,
    "ping": Ping,
    "profiles.search": Search,
    "profile.get": ProfileGet,
    "profile.export": ProfileExport,
    "profile.erase": ProfileErase,
    "sessions.list": SessionsList,
    "session.watch": SessionWatch,
    "session.unwatch": SessionUnwatch,
    "session.takeover": SessionTakeover,
    "session.say": SessionSay,
    "session.release": SessionRelease,
    "turn.relabel": TurnRelabel,
    "operators.list": OperatorsList,
    "operators.create": OperatorsCreate,
    "operators.revoke": OperatorsRevoke,
}
COMMAND_TYPES = frozenset(_TYPES) - {"auth", "ping"}


def parse_operator_frame(text: str) -> OperatorFrame | OperatorError:
    """Parse one /operator text frame. Never raises: bad input becomes an OperatorError."""
    try:
        frame, ref = read_frame(text, _TYPES)
    except Refused as refused:
        return OperatorError(OperatorErrorCode(refused.code), refused.message, refused.ref)
    if isinstance(frame, SessionSay) and len(frame.text) > MAX_TEXT_CHARS:
        return OperatorError(
            OperatorErrorCode.TEXT_TOO_LONG,
            f"text has {len(frame.text)} characters; the limit is {MAX_TEXT_CHARS}",
            ref,
        )
    return frame


# search cursors: opaque to clients


def encode_cursor(last_seen_at: datetime, user_id: str) -> str:
    raw = json.dumps([last_seen_at.isoformat(), user_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str) -> tuple[datetime, str] | None:
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        at, user_id = raw
        moment = datetime.fromisoformat(at)
    except (ValueError, TypeError, binascii.Error):
        return None
    if moment.tzinfo is None or not isinstance(user_id, str) or len(user_id) != 32:
        return None
    return moment, user_id


# server frames


@dataclass(frozen=True, slots=True)
class Result:
    """The answer to a command: `data`'s keys sit beside `ref` in the frame."""

    type: ClassVar[str] = "result"
    ref: str | None
    data: dict[str, Any] = field(default_factory=dict)


class ErrorReply(WireErrorFrame[OperatorErrorCode]):
    __slots__ = ()

    @classmethod
    def of(cls, error: OperatorError) -> ErrorReply:
        return cls(error.code, error.message, error.ref)


@dataclass(frozen=True, slots=True)
class SessionTurn:
    """A watched session's new turn (user, assistant or operator), as it happens."""

    type: ClassVar[str] = "session.turn"
    session_id: str
    turn: dict[str, Any]


@dataclass(frozen=True, slots=True)
class SessionState:
    """A watched session changed hands (bot / operator) or ended (closed)."""

    type: ClassVar[str] = "session.state"
    session_id: str
    status: str
    operator: str | None = None


OperatorServerFrame = Result | ErrorReply | SessionTurn | SessionState | Pong


def to_dict(frame: OperatorServerFrame, seq: int) -> dict[str, Any]:
    if isinstance(frame, Result):
        return {"type": frame.type, "seq": seq, "ref": frame.ref, **frame.data}
    return {"type": frame.type, "seq": seq, **frame_fields(frame)}


def serialize(frame: OperatorServerFrame, seq: int) -> str:
    return dumps(to_dict(frame, seq))
