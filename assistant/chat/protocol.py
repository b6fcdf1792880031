"""The /chat wire protocol: pure parsing and serialization, no I/O.

`parse_client_frame` turns one text frame into a typed client event or a `ProtocolError`;
it never raises. Server frames are frozen dataclasses that `serialize` writes with their
`seq`. docs/protocol.md documents every frame; tests parse its examples with this module.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    Strict,
    StringConstraints,
    ValidationError,
)
from pydantic_core import ErrorDetails, from_json

MAX_TEXT_CHARS = 4000
MAX_EVENTS_PER_FRAME = 100
MAX_FRAME_BYTES = 64 * 1024
# Events older than this or further in the future than the skew are refused as invalid.
OLDEST_EVENT = datetime(2000, 1, 1, tzinfo=UTC)
MAX_CLOCK_SKEW = timedelta(days=1)


class ErrorCode(StrEnum):
    INVALID_JSON = "invalid_json"
    INVALID_FRAME = "invalid_frame"
    UNKNOWN_TYPE = "unknown_type"
    INVALID_FIELD = "invalid_field"
    TEXT_TOO_LONG = "text_too_long"
    INVALID_TIMESTAMP = "invalid_timestamp"
    BINARY_NOT_SUPPORTED = "binary_not_supported"
    HELLO_REQUIRED = "hello_required"
    ALREADY_STARTED = "already_started"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_SUPPORTED = "not_supported"
    OVERLOADED = "overloaded"
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


@dataclass(frozen=True, slots=True)
class ProtocolError:
    code: ErrorCode
    message: str
    ref: str | None = None


# client frames

ClientId = Annotated[str, StringConstraints(min_length=1, max_length=128)]
SessionId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]


def _rfc3339_text(value: object) -> object:
    # Lax datetime parsing would take a bare number for Unix time; the contract says RFC 3339.
    if not isinstance(value, str):
        raise ValueError("must be an RFC 3339 date-time string with an offset")
    return value


def _base64_text(value: object) -> bytes:
    if not isinstance(value, str):
        raise ValueError("must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error:
        raise ValueError("is not valid base64") from None


def _finite(value: object) -> bool:
    """JSON has no NaN or Infinity; an overflowing literal like 1e400 would decode to inf."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return True


class _Frame(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", strict=True)


class UserInfo(_Frame):
    external_id: ClientId
    name: Annotated[str, StringConstraints(max_length=200)] | None = None
    locale: Annotated[str, StringConstraints(max_length=35)] | None = None


class Hello(_Frame):
    type: Literal["hello"]
    token: Annotated[str, StringConstraints(min_length=1, max_length=4096)] | None = None
    user: UserInfo | None = None
    session_id: SessionId | None = None
    last_seq: Annotated[int, Field(ge=0, le=2**53)] | None = None


class Message(_Frame):
    type: Literal["message"]
    id: ClientId
    text: Annotated[str, StringConstraints(min_length=1)]


class EventItem(_Frame):
    id: ClientId
    name: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    # RFC 3339 with an offset; lax only here so that JSON strings parse into datetimes.
    at: Annotated[AwareDatetime, Strict(False), BeforeValidator(_rfc3339_text)]
    props: dict[str, JsonValue] = Field(default_factory=dict)


class Event(EventItem):
    type: Literal["event"]


class Events(_Frame):
    type: Literal["events"]
    id: ClientId | None = None
    # Lax only for the container, so that a JSON array becomes a tuple; items stay strict.
    items: Annotated[
        tuple[EventItem, ...],
        Strict(False),
        Field(min_length=1, max_length=MAX_EVENTS_PER_FRAME),
    ]


class Audio(_Frame):
    type: Literal["audio"]
    id: ClientId
    encoding: Literal["pcm16", "mulaw"]
    sample_rate: Literal[8000, 16000]
    data: Annotated[bytes, BeforeValidator(_base64_text)]


class Ping(_Frame):
    type: Literal["ping"]
    id: ClientId | None = None


ClientFrame = Hello | Message | Event | Events | Audio | Ping

_CLIENT_TYPES: dict[str, type[_Frame]] = {
    "hello": Hello,
    "message": Message,
    "event": Event,
    "events": Events,
    "audio": Audio,
    "ping": Ping,
}


def _describe(error: ErrorDetails) -> str:
    where = ".".join(str(part) for part in error["loc"]) or "frame"
    return f"{where}: {error['msg']}"


def _validation_error(frame_type: str, exc: ValidationError, ref: str | None) -> ProtocolError:
    first = exc.errors(include_url=False, include_context=False, include_input=False)[0]
    loc = first["loc"]
    if "at" in loc:
        return ProtocolError(ErrorCode.INVALID_TIMESTAMP, _describe(first), ref)
    return ProtocolError(ErrorCode.INVALID_FIELD, f"{frame_type}: {_describe(first)}", ref)


def _check_times(
    items: tuple[EventItem, ...], now: datetime, ref: str | None
) -> ProtocolError | None:
    latest = now + MAX_CLOCK_SKEW
    for index, item in enumerate(items):
        if not OLDEST_EVENT <= item.at <= latest:
            return ProtocolError(
                ErrorCode.INVALID_TIMESTAMP,
                f"event {index} ({item.id}): 'at' must lie between 2000-01-01 and now + 1 day",
                ref,
            )
    return None


def parse_client_frame(text: str, *, now: datetime | None = None) -> ClientFrame | ProtocolError:
    """Parse one /chat text frame. Never raises: bad input becomes a ProtocolError."""
    try:
        raw = from_json(text, allow_inf_nan=False)
    except (ValueError, TypeError) as exc:
        # TypeError: a str holding lone surrogates, which cannot be encoded at all.
        return ProtocolError(ErrorCode.INVALID_JSON, f"not valid JSON: {exc}")
    if not _finite(raw):
        return ProtocolError(ErrorCode.INVALID_JSON, "not valid JSON: numbers must be finite")
    if not isinstance(raw, dict):
        return ProtocolError(ErrorCode.INVALID_FRAME, "a frame must be a JSON object")
    ref = raw.get("id") if isinstance(raw.get("id"), str) else None
    frame_type = raw.get("type")
    if not isinstance(frame_type, str):
        return ProtocolError(ErrorCode.INVALID_FRAME, "a frame needs a string 'type'", ref)
    model = _CLIENT_TYPES.get(frame_type)
    if model is None:
        known = ", ".join(sorted(_CLIENT_TYPES))
        return ProtocolError(
            ErrorCode.UNKNOWN_TYPE, f"unknown type {frame_type[:64]!r}; known: {known}", ref
        )
    try:
        frame = model.model_validate(raw)
    except ValidationError as exc:
        return _validation_error(frame_type, exc, ref)
    if isinstance(frame, Message) and len(frame.text) > MAX_TEXT_CHARS:
        return ProtocolError(
            ErrorCode.TEXT_TOO_LONG,
            f"message text has {len(frame.text)} characters; the limit is {MAX_TEXT_CHARS}",
            ref,
        )
    clock = now or datetime.now(UTC)
    if isinstance(frame, Event):
        return _check_times((frame,), clock, ref) or frame
    if isinstance(frame, Events):
        return _check_times(frame.items, clock, ref) or frame
    assert isinstance(frame, Hello | Message | Audio | Ping)
    return frame


# server frames


@dataclass(frozen=True, slots=True)
class IntentLabel:
    label: str
    confidence: float


@dataclass(frozen=True, slots=True)
class EmotionLabel:
    label: str
    scores: dict[str, float]


@dataclass(frozen=True, slots=True)
class Welcome:
    """Connection-scoped: sent with seq 0 and never replayed; last_seq is the stream's head."""

    type: ClassVar[str] = "welcome"
    session_id: str
    user_id: str
    resumed: bool
    last_seq: int


@dataclass(frozen=True, slots=True)
class Ack:
    type: ClassVar[str] = "ack"
    id: str | None
    stored: int | None = None
    duplicates: int | None = None


@dataclass(frozen=True, slots=True)
class ReplyDelta:
    type: ClassVar[str] = "reply.delta"
    turn_id: str
    text: str


@dataclass(frozen=True, slots=True)
class Reply:
    type: ClassVar[str] = "reply"
    turn_id: str
    text: str
    intent: IntentLabel | None = None
    emotion: EmotionLabel | None = None
    handoff: bool = False


@dataclass(frozen=True, slots=True)
class OperatorJoined:
    type: ClassVar[str] = "operator.joined"
    name: str | None = None


@dataclass(frozen=True, slots=True)
class OperatorMessage:
    type: ClassVar[str] = "operator.message"
    text: str


@dataclass(frozen=True, slots=True)
class OperatorLeft:
    type: ClassVar[str] = "operator.left"


@dataclass(frozen=True, slots=True)
class ErrorFrame:
    type: ClassVar[str] = "error"
    code: ErrorCode
    message: str
    ref: str | None = None

    @classmethod
    def of(cls, error: ProtocolError) -> ErrorFrame:
        return cls(error.code, error.message, error.ref)


@dataclass(frozen=True, slots=True)
class Pong:
    type: ClassVar[str] = "pong"
    id: str | None = None


ServerFrame = (
    Welcome
    | Ack
    | ReplyDelta
    | Reply
    | OperatorJoined
    | OperatorMessage
    | OperatorLeft
    | ErrorFrame
    | Pong
)


def _plain(value: Any) -> Any:
    if isinstance(value, IntentLabel):
        return {"label": value.label, "confidence": round(value.confidence, 4)}
    if isinstance(value, EmotionLabel):
        return {"label": value.label, "scores": {k: round(v, 4) for k, v in value.scores.items()}}
    return value


def to_dict(frame: ServerFrame, seq: int) -> dict[str, Any]:
    out: dict[str, Any] = {"type": frame.type, "seq": seq}
    for name in frame.__slots__:
        value = getattr(frame, name)
        if value is not None:
            out[name] = _plain(value)
    return out


def serialize(frame: ServerFrame, seq: int) -> str:
    """One server frame as the text that goes on the wire."""
    return json.dumps(to_dict(frame, seq), ensure_ascii=False, separators=(",", ":"))
