"""The /chat wire protocol: pure parsing and serialization, no I/O.

`parse_client_frame` turns one text frame into a typed client event or a `ProtocolError`;
it never raises. Server frames are frozen dataclasses that `serialize` writes with their
`seq`. Ping, pong, the error frame's shape and the reading and writing of JSON are the ones
every route shares (assistant.core.wire). docs/protocol.md documents every frame; tests parse
its examples with this module.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import BeforeValidator, Field, JsonValue, Strict, StringConstraints

from assistant.core.wire import (
    MAX_TEXT_CHARS,
    EmotionLabel,
    Frame,
    FrameId,
    HexId,
    IntentLabel,
    InvalidField,
    Ping,
    Pong,
    Refused,
    Timestamp,
    WireError,
    WireErrorFrame,
    describe,
    dumps,
    frame_fields,
    read_frame,
)

MAX_EVENTS_PER_FRAME = 100
# A voice note: at most this long, this many bytes of audio over all its parts (a minute of
# 16 kHz 16-bit PCM, the largest raw form), and this many parts.
MAX_NOTE_SECONDS = 60.0
MAX_NOTE_BYTES = 1_920_000
MAX_NOTE_PARTS = 128
# A note's encoding: raw samples (pcm16, mulaw) or a browser's Opus recording in a container.
NoteEncoding = Literal["pcm16", "mulaw", "webm", "ogg"]
CONTAINERS = ("webm", "ogg")
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
    UNSUPPORTED_ENCODING = "unsupported_encoding"
    NOTE_OUT_OF_ORDER = "note_out_of_order"
    NOTE_TOO_LONG = "note_too_long"
    NOTE_TOO_LARGE = "note_too_large"
    UNDECODABLE_AUDIO = "undecodable_audio"
    NO_SPEECH = "no_speech"
    OVERLOADED = "overloaded"
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


class ProtocolError(WireError[ErrorCode]):
    __slots__ = ()


# client frames


def _base64_text(value: object) -> bytes:
    if not isinstance(value, str):
        raise ValueError("must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error:
        raise ValueError("is not valid base64") from None


class UserInfo(Frame):
    external_id: FrameId
    name: Annotated[str, StringConstraints(max_length=200)] | None = None
    locale: Annotated[str, StringConstraints(max_length=35)] | None = None


class Hello(Frame):
    type: Literal["hello"]
    token: Annotated[str, StringConstraints(min_length=1, max_length=4096)] | None = None
    user: UserInfo | None = None
    session_id: HexId | None = None
    last_seq: Annotated[int, Field(ge=0, le=2**53)] | None = None


class Message(Frame):
    type: Literal["message"]
    id: FrameId
    text: Annotated[str, StringConstraints(min_length=1)]


class EventItem(Frame):
    id: FrameId
    name: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    at: Timestamp
    props: dict[str, JsonValue] = Field(default_factory=dict)


class Event(EventItem):
    type: Literal["event"]


class Events(Frame):
    type: Literal["events"]
    id: FrameId | None = None
    # Lax only for the container, so that a JSON array becomes a tuple; items stay strict.
    items: Annotated[
        tuple[EventItem, ...],
        Strict(False),
        Field(min_length=1, max_length=MAX_EVENTS_PER_FRAME),
    ]


class Audio(Frame):
    """One part of a voice note: `id` names the note (it becomes the user turn's client id,
    as a message's does), `part` counts from 0 and `last` marks the final one. A frame with
    neither is a whole note."""

    type: Literal["audio"]
    id: FrameId
    part: Annotated[int, Field(ge=0, le=2**31)] = 0
    last: bool = True
    encoding: NoteEncoding
    # The rate of raw samples; a container (webm, ogg) carries its own.
    sample_rate: Literal[8000, 16000] | None = None
    data: Annotated[bytes, BeforeValidator(_base64_text)]


ClientFrame = Hello | Message | Event | Events | Audio | Ping

_CLIENT_TYPES: dict[str, type[ClientFrame]] = {
    "hello": Hello,
    "message": Message,
    "event": Event,
    "events": Events,
    "audio": Audio,
    "ping": Ping,
}


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


def _refusal(refused: Refused) -> ProtocolError:
    return ProtocolError(ErrorCode(refused.code), refused.message, refused.ref)


def parse_client_frame(text: str, *, now: datetime | None = None) -> ClientFrame | ProtocolError:
    """Parse one /chat text frame. Never raises: bad input becomes a ProtocolError."""
    try:
        frame, ref = read_frame(text, _CLIENT_TYPES, finite=True)
    except InvalidField as refused:
        if "at" in refused.error["loc"]:
            return ProtocolError(ErrorCode.INVALID_TIMESTAMP, describe(refused.error), refused.ref)
        if refused.error["loc"] == ("encoding",) and refused.error["type"] == "literal_error":
            return ProtocolError(
                ErrorCode.UNSUPPORTED_ENCODING,
                f"audio: encoding must be one of {', '.join(get_args(NoteEncoding))}",
                refused.ref,
            )
        return _refusal(refused)
    except Refused as refused:
        return _refusal(refused)
    if isinstance(frame, Message) and len(frame.text) > MAX_TEXT_CHARS:
        return ProtocolError(
            ErrorCode.TEXT_TOO_LONG,
            f"message text has {len(frame.text)} characters; the limit is {MAX_TEXT_CHARS}",
            ref,
        )
    if isinstance(frame, Audio) and frame.encoding not in CONTAINERS and frame.sample_rate is None:
        return ProtocolError(
            ErrorCode.INVALID_FIELD,
            f"audio: sample_rate: required for {frame.encoding} (8000 or 16000)",
            ref,
        )
    clock = now or datetime.now(UTC)
    if isinstance(frame, Event):
        return _check_times((frame,), clock, ref) or frame
    if isinstance(frame, Events):
        return _check_times(frame.items, clock, ref) or frame
    return frame


# server frames


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
    # "operator": a person holds the conversation and the message reached their console.
    delivered_to: str | None = None
    # A voice note's part (held; the last one once the note is stored), and with the last
    # part, the note's transcript as stored.
    part: int | None = None
    transcript: str | None = None


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
    # While the conversation waits for a person: where the customer stands
    # (assistant.replies.waiting.WaitStatus).
    waiting: str | None = None
    # How the message was read against the conversation (assistant.replies.dialogue.TurnKind:
    # new_topic, follow_up or clarification); absent for a conversation intent, a reply while
    # waiting for a person, and with the dialogue state off.
    turn: str | None = None
    # A clarification's choices, as the widget shows them on buttons; sending one back answers.
    suggestions: tuple[str, ...] | None = None


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


class ErrorFrame(WireErrorFrame[ErrorCode]):
    __slots__ = ()

    @classmethod
    def of(cls, error: ProtocolError) -> ErrorFrame:
        return cls(error.code, error.message, error.ref)


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


def to_dict(frame: ServerFrame, seq: int) -> dict[str, Any]:
    return {"type": frame.type, "seq": seq, **frame_fields(frame)}


def serialize(frame: ServerFrame, seq: int) -> str:
    """One server frame as the text that goes on the wire."""
    return dumps(to_dict(frame, seq))
