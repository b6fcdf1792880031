"""Unit tests of the voice wire protocols: Twilio Media Streams and the native /voice frames."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest

from assistant.chat.protocol import ErrorCode
from assistant.core.wire import EmotionLabel, IntentLabel
from assistant.voice.protocol import (
    MAX_PARAMETERS,
    MediaFormat,
    Transcript,
    TwilioClear,
    TwilioConnected,
    TwilioDtmf,
    TwilioMarkEcho,
    TwilioMedia,
    TwilioOutMark,
    TwilioOutMedia,
    TwilioStart,
    TwilioStop,
    VoiceClear,
    VoiceDtmf,
    VoiceError,
    VoiceErrorCode,
    VoiceErrorFrame,
    VoiceReply,
    VoiceStart,
    VoiceStarted,
    VoiceStop,
    VoiceUser,
    parse_twilio,
    parse_voice,
    serialize_twilio,
    serialize_voice,
    voice_to_dict,
)

STREAM = "MZ18ad3ab5a668481ce02b83e7395059f0"
ACCOUNT = "AC25e16e9a716a4a1786a7c83f58e30482"
CALL = "CA4b4d2b3e6f8a4c0e9d1a2b3c4d5e6f70"
DOC = Path(__file__).resolve().parent.parent / "docs" / "voice.md"


def start_message(**start_overrides: Any) -> dict[str, Any]:
    start: dict[str, Any] = {
        "accountSid": ACCOUNT,
        "streamSid": STREAM,
        "callSid": CALL,
        "tracks": ["inbound"],
        "customParameters": {"external_id": "cust-1042"},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    }
    start.update(start_overrides)
    return {"event": "start", "sequenceNumber": "1", "start": start, "streamSid": STREAM}


def media_message(payload: str = "f39/fw==", **media_overrides: Any) -> dict[str, Any]:
    media = {"track": "inbound", "chunk": "2", "timestamp": "20", "payload": payload}
    media.update(media_overrides)
    return {"event": "media", "sequenceNumber": "3", "media": media, "streamSid": STREAM}


def twilio(message: dict[str, Any] | str) -> Any:
    return parse_twilio(message if isinstance(message, str) else json.dumps(message))


def twilio_error(message: dict[str, Any] | str) -> VoiceError:
    result = twilio(message)
    assert isinstance(result, VoiceError), result
    return result


def voice_error(frame: dict[str, Any] | str) -> VoiceError:
    result = parse_voice(frame if isinstance(frame, str) else json.dumps(frame))
    assert isinstance(result, VoiceError), result
    return result


# Twilio, inbound


def test_connected() -> None:
    frame = twilio({"event": "connected", "protocol": "Call", "version": "1.0.0"})
    assert frame == TwilioConnected("Call", "1.0.0")


def test_start_reads_every_field() -> None:
    frame = twilio(start_message())
    assert frame == TwilioStart(
        sequence_number=1,
        stream_sid=STREAM,
        account_sid=ACCOUNT,
        call_sid=CALL,
        tracks=("inbound",),
        media_format=MediaFormat("audio/x-mulaw", 8000, 1),
        custom_parameters={"external_id": "cust-1042"},
    )


def test_start_without_custom_parameters_has_none() -> None:
    message = start_message()
    del message["start"]["customParameters"]
    frame = twilio(message)
    assert isinstance(frame, TwilioStart)
    assert frame.custom_parameters == {}


def test_media_decodes_payload_and_string_counters() -> None:
    payload = bytes(range(160))
    frame = twilio(media_message(base64.b64encode(payload).decode()))
    assert frame == TwilioMedia(3, STREAM, "inbound", 2, 20, payload)


def test_media_accepts_numbers_where_twilio_writes_strings() -> None:
    message = media_message(chunk=2, timestamp=20)
    message["sequenceNumber"] = 3
    frame = twilio(message)
    assert isinstance(frame, TwilioMedia)
    assert (frame.sequence_number, frame.chunk, frame.timestamp_ms) == (3, 2, 20)


def test_media_of_any_length_is_audio() -> None:
    """Twilio sends 160 bytes (20 ms); a 7-byte payload is still 7 mu-law samples."""
    frame = twilio(media_message(base64.b64encode(b"\xff" * 7).decode()))
    assert isinstance(frame, TwilioMedia)
    assert len(frame.payload) == 7


def test_dtmf_mark_stop() -> None:
    dtmf = {
        "event": "dtmf",
        "streamSid": STREAM,
        "sequenceNumber": "5",
        "dtmf": {"track": "inbound_track", "digit": "1"},
    }
    assert twilio(dtmf) == TwilioDtmf(5, STREAM, "inbound_track", "1")
    mark = {"event": "mark", "sequenceNumber": "4", "streamSid": STREAM, "mark": {"name": "r1"}}
    assert twilio(mark) == TwilioMarkEcho(4, STREAM, "r1")
    stop = {
        "event": "stop",
        "sequenceNumber": "6",
        "streamSid": STREAM,
        "stop": {"accountSid": ACCOUNT, "callSid": CALL},
    }
    assert twilio(stop) == TwilioStop(6, STREAM, ACCOUNT, CALL)


def test_unknown_fields_are_ignored() -> None:
    message = media_message()
    message["extra"] = {"anything": 1}
    message["media"]["future"] = True
    assert isinstance(twilio(message), TwilioMedia)


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("{not json", VoiceErrorCode.INVALID_JSON),
        ('{"event": "media", "x": NaN}', VoiceErrorCode.INVALID_JSON),
        ("[1, 2]", VoiceErrorCode.INVALID_FRAME),
        ('{"no_event": 1}', VoiceErrorCode.INVALID_FRAME),
        ('{"event": 7}', VoiceErrorCode.INVALID_FRAME),
        ('{"event": "hangup"}', VoiceErrorCode.UNKNOWN_TYPE),
    ],
)
def test_unreadable_messages(text: str, code: VoiceErrorCode) -> None:
    assert twilio_error(text).code == code


def test_invalid_base64_is_invalid_audio() -> None:
    error = twilio_error(media_message("not base64!!"))
    assert error.code == VoiceErrorCode.INVALID_AUDIO
    assert error.kind == "media"
    assert "media.payload" in error.message


@pytest.mark.parametrize(
    ("media_overrides", "where"),
    [
        ({"payload": 12}, "media.payload"),
        ({"chunk": "-1"}, "media.chunk"),
        ({"chunk": "one"}, "media.chunk"),
        ({"timestamp": 1.5}, "media.timestamp"),
        ({"timestamp": True}, "media.timestamp"),
        ({"track": 1}, "media.track"),
    ],
)
def test_media_field_errors(media_overrides: dict[str, Any], where: str) -> None:
    error = twilio_error(media_message(**media_overrides))
    assert error.code == VoiceErrorCode.INVALID_FIELD
    assert where in error.message


def test_media_without_media_object_or_stream_sid() -> None:
    message = media_message()
    del message["media"]
    assert twilio_error(message).code == VoiceErrorCode.INVALID_FIELD
    message = media_message()
    del message["streamSid"]
    assert "streamSid" in twilio_error(message).message


@pytest.mark.parametrize(
    "media_format",
    [
        {"encoding": "audio/x-alaw", "sampleRate": 8000, "channels": 1},
        {"encoding": "audio/x-mulaw", "sampleRate": 16000, "channels": 1},
        {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 2},
    ],
)
def test_start_with_another_media_format_is_unsupported(media_format: dict[str, Any]) -> None:
    error = twilio_error(start_message(mediaFormat=media_format))
    assert error.code == VoiceErrorCode.UNSUPPORTED_AUDIO
    assert error.kind == "start"


@pytest.mark.parametrize(
    ("start_overrides", "where"),
    [
        ({"mediaFormat": "mulaw"}, "mediaFormat"),
        ({"mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": "8000", "channels": 1}}, ""),
        ({"mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000}}, "channels"),
        ({"tracks": "inbound"}, "start.tracks"),
        ({"callSid": None}, "start.callSid"),
        ({"accountSid": ""}, "start.accountSid"),
        ({"customParameters": ["external_id"]}, "customParameters"),
        ({"customParameters": {"external_id": 42}}, "customParameters.external_id"),
        ({"customParameters": {f"p{i}": "v" for i in range(MAX_PARAMETERS + 1)}}, ""),
    ],
)
def test_start_field_errors(start_overrides: dict[str, Any], where: str) -> None:
    error = twilio_error(start_message(**start_overrides))
    assert error.code == VoiceErrorCode.INVALID_FIELD
    assert where in error.message


@pytest.mark.parametrize("digit", ["", "12", "x", 5, None])
def test_dtmf_digit_errors(digit: Any) -> None:
    message = {
        "event": "dtmf",
        "streamSid": STREAM,
        "sequenceNumber": "5",
        "dtmf": {"track": "inbound_track", "digit": digit},
    }
    assert twilio_error(message).code == VoiceErrorCode.INVALID_FIELD


def test_mark_and_stop_field_errors() -> None:
    mark = {"event": "mark", "sequenceNumber": "4", "streamSid": STREAM, "mark": {}}
    assert "mark.name" in twilio_error(mark).message
    stop = {"event": "stop", "sequenceNumber": "6", "streamSid": STREAM, "stop": {}}
    assert "stop.accountSid" in twilio_error(stop).message
    connected = {"event": "connected", "protocol": "Call"}
    assert "version" in twilio_error(connected).message


# Twilio, outbound


def test_outbound_frames_have_twilio_shapes() -> None:
    payload = bytes([0xFF, 0x7F, 0x00])
    assert json.loads(serialize_twilio(TwilioOutMedia(STREAM, payload))) == {
        "event": "media",
        "streamSid": STREAM,
        "media": {"payload": base64.b64encode(payload).decode()},
    }
    assert json.loads(serialize_twilio(TwilioOutMark(STREAM, "reply-1"))) == {
        "event": "mark",
        "streamSid": STREAM,
        "mark": {"name": "reply-1"},
    }
    assert json.loads(serialize_twilio(TwilioClear(STREAM))) == {
        "event": "clear",
        "streamSid": STREAM,
    }


# /voice, client frames


def test_native_start() -> None:
    frame = parse_voice(
        json.dumps(
            {
                "type": "start",
                "token": "t.k",
                "user": {"external_id": "cust-1", "name": "Dana", "locale": "en-GB"},
                "encoding": "pcm16",
                "sample_rate": 16000,
            }
        )
    )
    assert frame == VoiceStart("pcm16", 16000, "t.k", VoiceUser("cust-1", "Dana", "en-GB"))
    minimal = parse_voice('{"type": "start", "encoding": "mulaw", "sample_rate": 8000}')
    assert minimal == VoiceStart("mulaw", 8000)


def test_native_dtmf_and_stop() -> None:
    assert parse_voice('{"type": "dtmf", "digit": "#"}') == VoiceDtmf("#")
    assert parse_voice('{"type": "stop"}') == VoiceStop()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ({"type": "start", "encoding": "opus", "sample_rate": 16000}, "unsupported_audio"),
        ({"type": "start", "encoding": "pcm16", "sample_rate": 44100}, "unsupported_audio"),
        ({"type": "start", "encoding": "mulaw", "sample_rate": 16000}, "unsupported_audio"),
        ({"type": "start", "encoding": "pcm16", "sample_rate": "16000"}, "invalid_field"),
        ({"type": "start", "encoding": "pcm16", "sample_rate": True}, "invalid_field"),
        ({"type": "start", "encoding": 1, "sample_rate": 16000}, "invalid_field"),
        ({"type": "start", "sample_rate": 16000}, "invalid_field"),
        (
            {"type": "start", "encoding": "pcm16", "sample_rate": 8000, "user": {"name": "x"}},
            "invalid_field",
        ),
        (
            {"type": "start", "encoding": "pcm16", "sample_rate": 8000, "user": "cust-1"},
            "invalid_field",
        ),
        (
            {"type": "start", "encoding": "pcm16", "sample_rate": 8000, "token": ""},
            "invalid_field",
        ),
        ({"type": "dtmf", "digit": "10"}, "invalid_field"),
        ({"type": "hello"}, "unknown_type"),
        ({"kind": "start"}, "invalid_frame"),
    ],
)
def test_native_errors(frame: dict[str, Any], code: str) -> None:
    error = voice_error(frame)
    assert error.code == code


def test_native_unreadable_text() -> None:
    assert voice_error("{").code == VoiceErrorCode.INVALID_JSON
    assert voice_error('"start"').code == VoiceErrorCode.INVALID_FRAME
    assert voice_error("\ud800").code == VoiceErrorCode.INVALID_JSON


def test_error_codes_shared_with_chat_keep_its_spelling() -> None:
    chat = {code.value for code in ErrorCode}
    shared = {code.value for code in VoiceErrorCode} & chat
    assert {
        "invalid_json",
        "invalid_frame",
        "unknown_type",
        "invalid_field",
        "unauthorized",
        "already_started",
        "overloaded",
        "unavailable",
        "internal",
    } <= shared


# /voice, server frames


def test_server_frames_leave_out_nulls_and_round_numbers() -> None:
    started = VoiceStarted("c1", "u1", "pcm16", 16000, True)
    assert voice_to_dict(started) == {
        "type": "started",
        "call_id": "c1",
        "user_id": "u1",
        "encoding": "pcm16",
        "sample_rate": 16000,
        "speaks": True,
    }
    assert voice_to_dict(Transcript("u1", "hello", 2.123456)) == {
        "type": "transcript",
        "utterance_id": "u1",
        "text": "hello",
        "at": 2.123,
    }
    reply = VoiceReply(
        "u1", "Sure.", IntentLabel("lost_or_stolen_card", 0.912345), EmotionLabel("neutral", {})
    )
    assert json.loads(serialize_voice(reply)) == {
        "type": "reply",
        "utterance_id": "u1",
        "text": "Sure.",
        "intent": {"label": "lost_or_stolen_card", "confidence": 0.9123},
        "emotion": {"label": "neutral", "scores": {}},
        "handoff": False,
    }
    assert voice_to_dict(VoiceClear()) == {"type": "clear"}
    error = VoiceErrorFrame.of(VoiceError(VoiceErrorCode.START_REQUIRED, "send start first"))
    assert voice_to_dict(error) == {
        "type": "error",
        "code": "start_required",
        "message": "send start first",
    }


# docs/voice.md stays true


_BLOCK = re.compile(r"^```json (?P<tag>[\w-]+)\n(?P<body>.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def _examples(tag: str) -> list[str]:
    return [m["body"] for m in _BLOCK.finditer(DOC.read_text(encoding="utf-8")) if m["tag"] == tag]


def test_documented_twilio_messages_parse() -> None:
    examples = _examples("twilio-in")
    kinds = {type(twilio(text)) for text in examples}
    assert kinds == {
        TwilioConnected,
        TwilioStart,
        TwilioMedia,
        TwilioDtmf,
        TwilioMarkEcho,
        TwilioStop,
    }, [twilio(text) for text in examples]


def test_documented_twilio_replies_are_what_the_server_writes() -> None:
    seen = set()
    for text in _examples("twilio-out"):
        raw = json.loads(text)
        frame: TwilioOutMedia | TwilioOutMark | TwilioClear
        if raw["event"] == "media":
            frame = TwilioOutMedia(raw["streamSid"], base64.b64decode(raw["media"]["payload"]))
        elif raw["event"] == "mark":
            frame = TwilioOutMark(raw["streamSid"], raw["mark"]["name"])
        else:
            frame = TwilioClear(raw["streamSid"])
        assert json.loads(serialize_twilio(frame)) == raw
        seen.add(raw["event"])
    assert seen == {"media", "mark", "clear"}


def test_documented_native_frames_parse() -> None:
    kinds = {type(parse_voice(text)) for text in _examples("voice-client")}
    assert kinds == {VoiceStart, VoiceDtmf, VoiceStop}
    server_types = {json.loads(text)["type"] for text in _examples("voice-server")}
    assert server_types == {"started", "transcript", "reply", "clear", "error"}
    for text in _examples("voice-server"):
        raw = json.loads(text)
        if raw["type"] == "error":
            assert raw["code"] in {code.value for code in VoiceErrorCode}
