"""The voice routes' wire protocols: pure parsing and serialization, no I/O.

Two protocols share this module:

- `/voice/twilio` speaks Twilio Media Streams exactly as Twilio sends it: inbound
  `connected`, `start`, `media`, `dtmf`, `mark` and `stop` (`parse_twilio`), outbound
  `media`, `mark` and `clear` (`serialize_twilio`). Twilio writes `sequenceNumber`,
  `chunk` and `timestamp` as decimal strings; they are parsed into integers.
- `/voice` is the native protocol: a JSON `start` (then binary audio), `dtmf` and `stop`
  from the client (`parse_voice`); `started`, `transcript`, `reply`, `clear` and `error`
  from the server (`serialize_voice`), beside binary audio.

Parsers never raise: bad input becomes a `VoiceError` with a `VoiceErrorCode`. docs/voice.md
documents every frame; tests parse its examples with this module.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Literal

from assistant.core.wire import (
    MAX_ID_CHARS,
    EmotionLabel,
    IntentLabel,
    Refused,
    WireErrorFrame,
    dumps,
    frame_fields,
    read_object,
)

TWILIO_ENCODING = "audio/x-mulaw"
TWILIO_SAMPLE_RATE = 8000
NATIVE_ENCODINGS = ("pcm16", "mulaw")
NATIVE_SAMPLE_RATES = (8000, 16000)
MAX_NAME_CHARS = 200
MAX_LOCALE_CHARS = 35
MAX_TOKEN_CHARS = 4096
MAX_PARAMETERS = 32
MAX_PARAMETER_CHARS = 1024
MAX_MARK_CHARS = 256
# DTMF keys: the twelve of a phone keypad and the four extended tones A-D.
_DIGIT = re.compile(r"^[0-9*#A-D]$")

NativeEncoding = Literal["pcm16", "mulaw"]


class VoiceErrorCode(StrEnum):
    """Why a voice frame was refused. Codes shared with /chat keep /chat's spelling."""

    INVALID_JSON = "invalid_json"
    INVALID_FRAME = "invalid_frame"
    UNKNOWN_TYPE = "unknown_type"
    INVALID_FIELD = "invalid_field"
    # Audio that cannot be decoded: bad base64.
    INVALID_AUDIO = "invalid_audio"
    # A well-formed stream in an encoding, rate or channel count the server does not take.
    UNSUPPORTED_AUDIO = "unsupported_audio"
    START_REQUIRED = "start_required"
    ALREADY_STARTED = "already_started"
    UNAUTHORIZED = "unauthorized"
    OVERLOADED = "overloaded"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


@dataclass(frozen=True, slots=True)
class VoiceError:
    code: VoiceErrorCode
    message: str
    # The Twilio event or native frame type the error is about, when it could be read.
    kind: str | None = None


def _object(raw: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = raw.get(name)
    if not isinstance(value, dict):
        raise Refused(VoiceErrorCode.INVALID_FIELD, f"{name}: must be an object")
    return value


def _text(
    raw: Mapping[str, Any],
    name: str,
    *,
    where: str = "",
    max_chars: int = MAX_ID_CHARS,
    min_chars: int = 1,
) -> str:
    value = raw.get(name)
    label = f"{where}{name}"
    if not isinstance(value, str):
        raise Refused(VoiceErrorCode.INVALID_FIELD, f"{label}: must be a string")
    if not min_chars <= len(value) <= max_chars:
        raise Refused(
            VoiceErrorCode.INVALID_FIELD,
            f"{label}: must hold {min_chars} to {max_chars} characters",
        )
    return value


def _optional_text(
    raw: Mapping[str, Any], name: str, *, where: str = "", max_chars: int = MAX_ID_CHARS
) -> str | None:
    if raw.get(name) is None:
        return None
    return _text(raw, name, where=where, max_chars=max_chars)


def _counter(raw: Mapping[str, Any], name: str, *, where: str = "") -> int:
    """A non-negative integer that Twilio writes as a decimal string (numbers accepted too)."""
    value = raw.get(name)
    label = f"{where}{name}"
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 18:
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**18:
        return value
    raise Refused(VoiceErrorCode.INVALID_FIELD, f"{label}: must be a non-negative integer")


def _audio(value: object, label: str) -> bytes:
    if not isinstance(value, str):
        raise Refused(VoiceErrorCode.INVALID_FIELD, f"{label}: must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:  # binascii.Error, or a non-ASCII character in the string
        raise Refused(VoiceErrorCode.INVALID_AUDIO, f"{label}: is not valid base64") from None


def _digit(raw: Mapping[str, Any], name: str, where: str) -> str:
    value = raw.get(name)
    if not isinstance(value, str) or not _DIGIT.match(value):
        raise Refused(VoiceErrorCode.INVALID_FIELD, f"{where}{name}: must be one of 0-9, *, #, A-D")
    return value


# Twilio Media Streams: inbound


@dataclass(frozen=True, slots=True)
class TwilioConnected:
    protocol: str
    version: str


@dataclass(frozen=True, slots=True)
class MediaFormat:
    encoding: str
    sample_rate: int
    channels: int


@dataclass(frozen=True, slots=True)
class TwilioStart:
    sequence_number: int
    stream_sid: str
    account_sid: str
    call_sid: str
    tracks: tuple[str, ...]
    media_format: MediaFormat
    # The <Parameter> names and values of the TwiML <Stream>: the caller's identity.
    custom_parameters: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TwilioMedia:
    sequence_number: int
    stream_sid: str
    track: str  # "inbound" (the caller) or "outbound"
    chunk: int
    timestamp_ms: int  # since the stream started
    payload: bytes  # mu-law, 8 kHz, mono


@dataclass(frozen=True, slots=True)
class TwilioDtmf:
    sequence_number: int
    stream_sid: str
    track: str
    digit: str


@dataclass(frozen=True, slots=True)
class TwilioMarkEcho:
    """Twilio played the audio sent before the mark of this name (or a `clear` dropped it)."""

    sequence_number: int
    stream_sid: str
    name: str


@dataclass(frozen=True, slots=True)
class TwilioStop:
    sequence_number: int
    stream_sid: str
    account_sid: str
    call_sid: str


TwilioFrame = TwilioConnected | TwilioStart | TwilioMedia | TwilioDtmf | TwilioMarkEcho | TwilioStop


def _media_format(raw: Mapping[str, Any]) -> MediaFormat:
    fmt = _object(raw, "mediaFormat")
    encoding = _text(fmt, "encoding", where="start.mediaFormat.")
    rate, channels = fmt.get("sampleRate"), fmt.get("channels")
    if not isinstance(rate, int) or isinstance(rate, bool):
        raise Refused(
            VoiceErrorCode.INVALID_FIELD, "start.mediaFormat.sampleRate: must be an integer"
        )
    if not isinstance(channels, int) or isinstance(channels, bool):
        raise Refused(
            VoiceErrorCode.INVALID_FIELD, "start.mediaFormat.channels: must be an integer"
        )
    if (encoding, rate, channels) != (TWILIO_ENCODING, TWILIO_SAMPLE_RATE, 1):
        raise Refused(
            VoiceErrorCode.UNSUPPORTED_AUDIO,
            f"mediaFormat {encoding} {rate} Hz x{channels}: "
            f"expected {TWILIO_ENCODING} {TWILIO_SAMPLE_RATE} Hz mono",
        )
    return MediaFormat(encoding, rate, channels)


def _parameters(raw: Mapping[str, Any]) -> dict[str, str]:
    params = raw.get("customParameters")
    if params is None:
        return {}
    if not isinstance(params, dict) or len(params) > MAX_PARAMETERS:
        raise Refused(
            VoiceErrorCode.INVALID_FIELD,
            f"start.customParameters: must be an object of at most {MAX_PARAMETERS} strings",
        )
    for key, value in params.items():
        if not isinstance(value, str) or len(value) > MAX_PARAMETER_CHARS:
            raise Refused(
                VoiceErrorCode.INVALID_FIELD,
                f"start.customParameters.{key[:64]}: must be a string of at most "
                f"{MAX_PARAMETER_CHARS} characters",
            )
    return dict(params)


def _twilio_start(raw: Mapping[str, Any]) -> TwilioStart:
    start = _object(raw, "start")
    tracks = start.get("tracks")
    if not isinstance(tracks, list) or not all(isinstance(t, str) for t in tracks):
        raise Refused(VoiceErrorCode.INVALID_FIELD, "start.tracks: must be a list of strings")
    return TwilioStart(
        sequence_number=_counter(raw, "sequenceNumber"),
        stream_sid=_text(raw, "streamSid"),
        account_sid=_text(start, "accountSid", where="start."),
        call_sid=_text(start, "callSid", where="start."),
        tracks=tuple(tracks),
        media_format=_media_format(start),
        custom_parameters=_parameters(start),
    )


def _twilio_media(raw: Mapping[str, Any]) -> TwilioMedia:
    media = _object(raw, "media")
    return TwilioMedia(
        sequence_number=_counter(raw, "sequenceNumber"),
        stream_sid=_text(raw, "streamSid"),
        track=_text(media, "track", where="media."),
        chunk=_counter(media, "chunk", where="media."),
        timestamp_ms=_counter(media, "timestamp", where="media."),
        payload=_audio(media.get("payload"), "media.payload"),
    )


def _twilio_frame(event: str, raw: Mapping[str, Any]) -> TwilioFrame:
    if event == "media":  # first: fifty of these a second
        return _twilio_media(raw)
    if event == "connected":
        return TwilioConnected(_text(raw, "protocol"), _text(raw, "version"))
    if event == "start":
        return _twilio_start(raw)
    if event == "dtmf":
        dtmf = _object(raw, "dtmf")
        return TwilioDtmf(
            _counter(raw, "sequenceNumber"),
            _text(raw, "streamSid"),
            _text(dtmf, "track", where="dtmf."),
            _digit(dtmf, "digit", "dtmf."),
        )
    if event == "mark":
        mark = _object(raw, "mark")
        return TwilioMarkEcho(
            _counter(raw, "sequenceNumber"),
            _text(raw, "streamSid"),
            _text(mark, "name", where="mark.", max_chars=MAX_MARK_CHARS),
        )
    if event == "stop":
        stop = _object(raw, "stop")
        return TwilioStop(
            _counter(raw, "sequenceNumber"),
            _text(raw, "streamSid"),
            _text(stop, "accountSid", where="stop."),
            _text(stop, "callSid", where="stop."),
        )
    raise Refused(VoiceErrorCode.UNKNOWN_TYPE, f"unknown event {event[:64]!r}")


def parse_twilio(text: str | bytes) -> TwilioFrame | VoiceError:
    """Parse one message from Twilio. Never raises: bad input becomes a VoiceError."""
    event: str | None = None
    try:
        raw = read_object(text)
        found = raw.get("event")
        if not isinstance(found, str):
            raise Refused(VoiceErrorCode.INVALID_FRAME, "a message needs a string 'event'")
        event = found
        return _twilio_frame(event, raw)
    except Refused as refused:
        return VoiceError(VoiceErrorCode(refused.code), refused.message, event)


# Twilio Media Streams: outbound


@dataclass(frozen=True, slots=True)
class TwilioOutMedia:
    event: ClassVar[str] = "media"
    stream_sid: str
    payload: bytes  # mu-law, 8 kHz, mono


@dataclass(frozen=True, slots=True)
class TwilioOutMark:
    """Twilio echoes a mark of this name once the audio sent before it has played."""

    event: ClassVar[str] = "mark"
    stream_sid: str
    name: str


@dataclass(frozen=True, slots=True)
class TwilioClear:
    """Drop the audio Twilio has buffered (barge-in); Twilio then echoes the pending marks."""

    event: ClassVar[str] = "clear"
    stream_sid: str


TwilioOutFrame = TwilioOutMedia | TwilioOutMark | TwilioClear


def serialize_twilio(frame: TwilioOutFrame) -> str:
    out: dict[str, Any] = {"event": frame.event, "streamSid": frame.stream_sid}
    if isinstance(frame, TwilioOutMedia):
        out["media"] = {"payload": base64.b64encode(frame.payload).decode("ascii")}
    elif isinstance(frame, TwilioOutMark):
        out["mark"] = {"name": frame.name}
    return json.dumps(out, separators=(",", ":"))


# /voice (native): client frames


@dataclass(frozen=True, slots=True)
class VoiceUser:
    external_id: str
    name: str | None = None
    locale: str | None = None


@dataclass(frozen=True, slots=True)
class VoiceStart:
    encoding: NativeEncoding
    sample_rate: int
    token: str | None = None
    user: VoiceUser | None = None


@dataclass(frozen=True, slots=True)
class VoiceDtmf:
    digit: str


@dataclass(frozen=True, slots=True)
class VoiceStop:
    """The caller hangs up: the server finishes the turns in flight, then closes."""


VoiceClientFrame = VoiceStart | VoiceDtmf | VoiceStop


def _voice_user(raw: Mapping[str, Any]) -> VoiceUser | None:
    if raw.get("user") is None:
        return None
    user = _object(raw, "user")
    return VoiceUser(
        external_id=_text(user, "external_id", where="user."),
        name=_optional_text(user, "name", where="user.", max_chars=MAX_NAME_CHARS),
        locale=_optional_text(user, "locale", where="user.", max_chars=MAX_LOCALE_CHARS),
    )


def _voice_start(raw: Mapping[str, Any]) -> VoiceStart:
    encoding = raw.get("encoding")
    if not isinstance(encoding, str):
        raise Refused(VoiceErrorCode.INVALID_FIELD, "encoding: must be a string")
    rate = raw.get("sample_rate")
    if not isinstance(rate, int) or isinstance(rate, bool):
        raise Refused(VoiceErrorCode.INVALID_FIELD, "sample_rate: must be an integer")
    if encoding not in NATIVE_ENCODINGS:
        known = ", ".join(NATIVE_ENCODINGS)
        raise Refused(
            VoiceErrorCode.UNSUPPORTED_AUDIO,
            f"encoding {encoding[:32]!r} is not supported; use one of {known}",
        )
    if rate not in NATIVE_SAMPLE_RATES:
        raise Refused(
            VoiceErrorCode.UNSUPPORTED_AUDIO,
            f"sample_rate {rate} is not supported; use 8000 or 16000",
        )
    if encoding == "mulaw" and rate != 8000:
        # G.711 mu-law is telephone audio: 8 kHz only.
        raise Refused(VoiceErrorCode.UNSUPPORTED_AUDIO, "mulaw audio must be 8000 Hz")
    return VoiceStart(
        encoding="pcm16" if encoding == "pcm16" else "mulaw",
        sample_rate=rate,
        token=_optional_text(raw, "token", max_chars=MAX_TOKEN_CHARS),
        user=_voice_user(raw),
    )


def parse_voice(text: str) -> VoiceClientFrame | VoiceError:
    """Parse one /voice text frame. Never raises: bad input becomes a VoiceError."""
    kind: str | None = None
    try:
        raw = read_object(text)
        found = raw.get("type")
        if not isinstance(found, str):
            raise Refused(VoiceErrorCode.INVALID_FRAME, "a frame needs a string 'type'")
        kind = found
        if kind == "start":
            return _voice_start(raw)
        if kind == "dtmf":
            return VoiceDtmf(_digit(raw, "digit", ""))
        if kind == "stop":
            return VoiceStop()
        raise Refused(
            VoiceErrorCode.UNKNOWN_TYPE, f"unknown type {kind[:64]!r}; known: dtmf, start, stop"
        )
    except Refused as refused:
        return VoiceError(VoiceErrorCode(refused.code), refused.message, kind)


# /voice (native): server frames


@dataclass(frozen=True, slots=True)
class VoiceStarted:
    type: ClassVar[str] = "started"
    call_id: str  # the conversation's id
    user_id: str
    encoding: NativeEncoding  # of the binary audio the server sends back: the client's own
    sample_rate: int
    # False when the server has no speech synthesizer: replies come as text only.
    speaks: bool


@dataclass(frozen=True, slots=True)
class Transcript:
    type: ClassVar[str] = "transcript"
    utterance_id: str
    text: str
    at: float | None = None  # seconds of call audio at the end of the utterance


@dataclass(frozen=True, slots=True)
class VoiceReply:
    type: ClassVar[str] = "reply"
    utterance_id: str
    text: str
    intent: IntentLabel | None = None
    emotion: EmotionLabel | None = None
    handoff: bool = False
    waiting: str | None = None  # as in /chat's reply: where a caller waiting for a person stands
    turn: str | None = None  # as in /chat's reply: new_topic, follow_up or clarification
    suggestions: tuple[str, ...] | None = None  # a clarification's choices, as in /chat


@dataclass(frozen=True, slots=True)
class VoiceClear:
    """Barge-in: stop playing the reply audio received so far and drop what is buffered."""

    type: ClassVar[str] = "clear"
    utterance_id: str | None = None  # the reply being cut off


class VoiceErrorFrame(WireErrorFrame[VoiceErrorCode]):
    """`ref` stays None, so it never reaches the wire: voice frames carry no ids."""

    __slots__ = ()

    @classmethod
    def of(cls, error: VoiceError) -> VoiceErrorFrame:
        return cls(error.code, error.message)


VoiceServerFrame = VoiceStarted | Transcript | VoiceReply | VoiceClear | VoiceErrorFrame


def voice_to_dict(frame: VoiceServerFrame) -> dict[str, Any]:
    out: dict[str, Any] = {"type": frame.type}
    for name, value in frame_fields(frame).items():
        # Seconds of call audio, to the millisecond.
        out[name] = round(value, 3) if isinstance(value, float) else value
    return out


def serialize_voice(frame: VoiceServerFrame) -> str:
    """One /voice server frame as the text that goes on the wire (null fields left out)."""
    return dumps(voice_to_dict(frame))
