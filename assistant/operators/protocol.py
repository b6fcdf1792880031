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

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    ValidationError,
    model_validator,
)
from pydantic_core import ErrorDetails, from_json

from assistant.chat.protocol import MAX_TEXT_CHARS

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


@dataclass(frozen=True, slots=True)
class OperatorError:
    code: OperatorErrorCode
    message: str
    ref: str | None = None


Id = Annotated[str, StringConstraints(min_length=1, max_length=128)]
HexId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
Label = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Filter = Annotated[str, StringConstraints(min_length=1, max_length=200)]
Moment = Annotated[AwareDatetime, Strict(False), BeforeValidator(lambda v: _text_only(v))]


def _text_only(value: object) -> object:
    if not isinstance(value, str):
        raise ValueError("must be an RFC 3339 date-time string with an offset")
    return value


class _Frame(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", strict=True)


class Auth(_Frame):
    type: Literal["auth"]
    id: Id | None = None
    token: Annotated[str, StringConstraints(min_length=1, max_length=512)]


class Ping(_Frame):
    type: Literal["ping"]
    id: Id | None = None


class Search(_Frame):
    type: Literal["profiles.search"]
    id: Id
    q: Filter | None = None
    emotion: Label | None = None
    intent: Label | None = None
    seen_after: Moment | None = None
    seen_before: Moment | None = None
    limit: Annotated[int, Field(ge=1, le=MAX_SEARCH_LIMIT)] = 20
    cursor: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None


class ProfileGet(_Frame):
    type: Literal["profile.get"]
    id: Id
    user_id: HexId


class ProfileExport(_Frame):
    type: Literal["profile.export"]
    id: Id
    user_id: HexId


class ProfileErase(_Frame):
    type: Literal["profile.erase"]
    id: Id
    user_id: HexId


class SessionsList(_Frame):
    type: Literal["sessions.list"]
    id: Id


class SessionWatch(_Frame):
    type: Literal["session.watch"]
    id: Id
    session_id: HexId


class SessionUnwatch(_Frame):
    type: Literal["session.unwatch"]
    id: Id
    session_id: HexId


class SessionTakeover(_Frame):
    type: Literal["session.takeover"]
    id: Id
    session_id: HexId


class SessionSay(_Frame):
    type: Literal["session.say"]
    id: Id
    session_id: HexId
    text: Annotated[str, StringConstraints(min_length=1)]


class SessionRelease(_Frame):
    type: Literal["session.release"]
    id: Id
    session_id: HexId


class TurnRelabel(_Frame):
    type: Literal["turn.relabel"]
    id: Id
    turn_id: HexId
    intent: Label | None = None
    emotion: Label | None = None

    @model_validator(mode="after")
    def _something(self) -> TurnRelabel:
        if self.intent is None and self.emotion is None:
            raise ValueError("give intent, emotion or both")
        return self


class OperatorsList(_Frame):
    type: Literal["operators.list"]
    id: Id


class OperatorsCreate(_Frame):
    type: Literal["operators.create"]
    id: Id
    name: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    role: Literal["viewer", "agent", "admin"]


class OperatorsRevoke(_Frame):
    type: Literal["operators.revoke"]
    id: Id
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

_TYPES: dict[str, type[_Frame]] = {
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


def _describe(error: ErrorDetails) -> str:
    where = ".".join(str(part) for part in error["loc"]) or "frame"
    return f"{where}: {error['msg']}"


def parse_operator_frame(text: str) -> OperatorFrame | OperatorError:
    """Parse one /operator text frame. Never raises: bad input becomes an OperatorError."""
    try:
        raw = from_json(text, allow_inf_nan=False)
    except (ValueError, TypeError) as exc:
        return OperatorError(OperatorErrorCode.INVALID_JSON, f"not valid JSON: {exc}")
    if not isinstance(raw, dict):
        return OperatorError(OperatorErrorCode.INVALID_FRAME, "a frame must be a JSON object")
    ref = raw.get("id") if isinstance(raw.get("id"), str) else None
    frame_type = raw.get("type")
    if not isinstance(frame_type, str):
        return OperatorError(OperatorErrorCode.INVALID_FRAME, "a frame needs a string 'type'", ref)
    model = _TYPES.get(frame_type)
    if model is None:
        return OperatorError(
            OperatorErrorCode.UNKNOWN_TYPE,
            f"unknown type {frame_type[:64]!r}; known: {', '.join(sorted(_TYPES))}",
            ref,
        )
    try:
        frame = model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_context=False, include_input=False)[0]
        return OperatorError(
            OperatorErrorCode.INVALID_FIELD, f"{frame_type}: {_describe(first)}", ref
        )
    if isinstance(frame, SessionSay) and len(frame.text) > MAX_TEXT_CHARS:
        return OperatorError(
            OperatorErrorCode.TEXT_TOO_LONG,
            f"text has {len(frame.text)} characters; the limit is {MAX_TEXT_CHARS}",
            ref,
        )
    return frame  # type: ignore[return-value]


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


@dataclass(frozen=True, slots=True)
class ErrorReply:
    type: ClassVar[str] = "error"
    code: OperatorErrorCode
    message: str
    ref: str | None = None

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


@dataclass(frozen=True, slots=True)
class Pong:
    type: ClassVar[str] = "pong"
    id: str | None = None


OperatorServerFrame = Result | ErrorReply | SessionTurn | SessionState | Pong


def to_dict(frame: OperatorServerFrame, seq: int) -> dict[str, Any]:
    out: dict[str, Any] = {"type": frame.type, "seq": seq}
    if isinstance(frame, Result):
        out["ref"] = frame.ref
        out.update(frame.data)
        return out
    for name in frame.__slots__:
        value = getattr(frame, name)
        if value is not None:
            out[name] = value
    return out


def serialize(frame: OperatorServerFrame, seq: int) -> str:
    return json.dumps(to_dict(frame, seq), ensure_ascii=False, separators=(",", ":"))
