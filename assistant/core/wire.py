"""What the three wire protocols (/chat, /operator, /voice) share: pure code, no I/O.

Close codes (RFC 6455, 7.4.1), the closed-transport error, the limits every route applies,
the base of the pydantic client frames with the id and RFC 3339 timestamp fields they use,
ping and pong, the reply's intent and emotion labels, the error and the error frame each
route specializes with its own codes, and the reading and writing of JSON frames.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Generic, Literal, TypeVar

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Strict,
    StringConstraints,
    ValidationError,
)
from pydantic_core import ErrorDetails, from_json

__all__ = [
    "CLOSE_INTERNAL",
    "CLOSE_NORMAL",
    "CLOSE_POLICY",
    "CLOSE_SERVICE_RESTART",
    "CLOSE_TRY_AGAIN",
    "CLOSE_UNSUPPORTED",
    "MAX_FRAME_BYTES",
    "MAX_ID_CHARS",
    "MAX_TEXT_CHARS",
    "EmotionLabel",
    "Frame",
    "FrameId",
    "HexId",
    "IntentLabel",
    "InvalidField",
    "Ping",
    "Pong",
    "Refused",
    "Timestamp",
    "TransportClosed",
    "WireCode",
    "WireError",
    "WireErrorFrame",
    "describe",
    "dumps",
    "finite_json",
    "frame_fields",
    "read_frame",
    "read_object",
]

CLOSE_NORMAL = 1000
CLOSE_UNSUPPORTED = 1003
CLOSE_POLICY = 1008
CLOSE_INTERNAL = 1011
# The server is restarting (draining): reconnect, to any replica, and resume.
CLOSE_SERVICE_RESTART = 1012
CLOSE_TRY_AGAIN = 1013

# The largest frame any route reads; websockets closes with 1009 above it.
MAX_FRAME_BYTES = 64 * 1024
# A customer's message, and an operator's words into a conversation, which become one.
MAX_TEXT_CHARS = 4000
MAX_ID_CHARS = 128


class TransportClosed(Exception):
    """The peer is gone: a send or close found the connection already closed.

    The network edge raises it in place of its WebSocket library's own error, so that the
    conversation side can tell a vanished peer (routine) from a fault (logged).
    """


# client frames

# An id the client chose for a frame, echoed as `ref` in the answer.
FrameId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS)]
# An id the server issued: a session, user or turn.
HexId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]


def _rfc3339_text(value: object) -> object:
    # Lax datetime parsing would take a bare number for Unix time; the contract says RFC 3339.
    if not isinstance(value, str):
        raise ValueError("must be an RFC 3339 date-time string with an offset")
    return value


# RFC 3339 with an offset; lax only here so that JSON strings parse into datetimes.
Timestamp = Annotated[AwareDatetime, Strict(False), BeforeValidator(_rfc3339_text)]


class Frame(BaseModel):
    """A client frame: immutable, strict about types, silent about fields it does not know."""

    model_config = ConfigDict(frozen=True, extra="ignore", strict=True)


class Ping(Frame):
    type: Literal["ping"]
    id: FrameId | None = None


# server frames


@dataclass(frozen=True, slots=True)
class Pong:
    """The answer to a ping, echoing its id."""

    type: ClassVar[str] = "pong"
    id: str | None = None


@dataclass(frozen=True, slots=True)
class IntentLabel:
    label: str
    confidence: float


@dataclass(frozen=True, slots=True)
class EmotionLabel:
    label: str
    scores: dict[str, float]


# errors


class WireCode(StrEnum):
    """The refusals every route has, spelled the same in each route's own error codes."""

    INVALID_JSON = "invalid_json"
    INVALID_FRAME = "invalid_frame"
    UNKNOWN_TYPE = "unknown_type"
    INVALID_FIELD = "invalid_field"


CodeT = TypeVar("CodeT", bound=StrEnum)


@dataclass(frozen=True, slots=True)
class WireError(Generic[CodeT]):
    """A client frame refused: a route's code, words for people, and the frame's id if read."""

    code: CodeT
    message: str
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class WireErrorFrame(Generic[CodeT]):
    """The `error` frame every route sends; `ref` is left out where it is None."""

    type: ClassVar[str] = "error"
    code: CodeT
    message: str
    ref: str | None = None


class Refused(Exception):
    """Raised while reading a frame; each route's parser turns it into its own error value,
    so it never leaves a protocol module. `code` is the route's code or a WireCode."""

    def __init__(self, code: StrEnum, message: str, ref: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref


class InvalidField(Refused):
    """A field failed validation; `error` says which, for routes that give some fields a
    code of their own."""

    def __init__(self, frame_type: str, error: ErrorDetails, ref: str | None) -> None:
        super().__init__(WireCode.INVALID_FIELD, f"{frame_type}: {describe(error)}", ref)
        self.error = error


def describe(error: ErrorDetails) -> str:
    where = ".".join(str(part) for part in error["loc"]) or "frame"
    return f"{where}: {error['msg']}"


# reading


def finite_json(value: object) -> bool:
    """Whether every number in a decoded JSON value is finite. JSON has no NaN or Infinity,
    but an overflowing literal like 1e400 decodes to inf."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(finite_json(v) for v in value.values())
    if isinstance(value, list):
        return all(finite_json(v) for v in value)
    return True


def read_object(text: str | bytes, *, finite: bool = False) -> dict[str, Any]:
    """One frame's JSON object. With `finite`, an overflowing number anywhere refuses it too;
    without, such a number is left to the field checks."""
    try:
        raw = from_json(text, allow_inf_nan=False)
    except (ValueError, TypeError) as exc:
        # TypeError: a str holding lone surrogates, which cannot be encoded at all.
        raise Refused(WireCode.INVALID_JSON, f"not valid JSON: {exc}") from None
    if finite and not finite_json(raw):
        raise Refused(WireCode.INVALID_JSON, "not valid JSON: numbers must be finite")
    if not isinstance(raw, dict):
        raise Refused(WireCode.INVALID_FRAME, "a frame must be a JSON object")
    return raw


FrameT = TypeVar("FrameT", bound=Frame)


def read_frame(
    text: str, frames: Mapping[str, type[FrameT]], *, finite: bool = False
) -> tuple[FrameT, str | None]:
    """One client frame of a route whose frames are told apart by `type`, and its `id`
    (when it is a string, whether or not the frame is valid)."""
    raw = read_object(text, finite=finite)
    ref = raw.get("id") if isinstance(raw.get("id"), str) else None
    frame_type = raw.get("type")
    if not isinstance(frame_type, str):
        raise Refused(WireCode.INVALID_FRAME, "a frame needs a string 'type'", ref)
    model = frames.get(frame_type)
    if model is None:
        known = ", ".join(sorted(frames))
        raise Refused(
            WireCode.UNKNOWN_TYPE, f"unknown type {frame_type[:64]!r}; known: {known}", ref
        )
    try:
        return model.model_validate(raw), ref
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_context=False, include_input=False)[0]
        raise InvalidField(frame_type, first, ref) from None


# writing


# Server frame classes are few and fixed: their field names are looked up once each.
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in fields(cls))
    return names


def _plain(value: Any) -> Any:
    if isinstance(value, IntentLabel):
        return {"label": value.label, "confidence": round(value.confidence, 4)}
    if isinstance(value, EmotionLabel):
        return {"label": value.label, "scores": {k: round(v, 4) for k, v in value.scores.items()}}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def frame_fields(frame: object) -> dict[str, Any]:
    """A server frame's fields in declaration order, as JSON values; None ones are left out."""
    out: dict[str, Any] = {}
    for name in _field_names(type(frame)):
        value = getattr(frame, name)
        if value is not None:
            out[name] = _plain(value)
    return out


def dumps(frame: Mapping[str, Any]) -> str:
    """A frame as compact JSON text, non-ASCII characters as they are."""
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":"))
