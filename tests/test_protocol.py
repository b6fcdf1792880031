"""Unit tests of the /chat wire protocol: parse_client_frame, to_dict and serialize."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta, timezone
from enum import StrEnum
from typing import Any

import pytest

from assistant.chat.protocol import (
    MAX_EVENTS_PER_FRAME,
    Ack,
    Audio,
    ErrorCode,
    ErrorFrame,
    Event,
    Events,
    Hello,
    Message,
    OperatorJoined,
    OperatorLeft,
    OperatorMessage,
    ProtocolError,
    Reply,
    ReplyDelta,
    ServerFrame,
    Welcome,
    parse_client_frame,
    serialize,
    to_dict,
)
from assistant.core.wire import MAX_TEXT_CHARS, EmotionLabel, IntentLabel, Ping, Pong, WireCode
from assistant.operators.protocol import OperatorErrorCode
from assistant.voice.protocol import VoiceErrorCode

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
SESSION_ID = "0123456789abcdef0123456789abcdef"
FRAME_TYPES = (Hello, Message, Event, Events, Audio, Ping)


def parse(frame: dict[str, Any] | str, now: datetime = NOW) -> Any:
    text = frame if isinstance(frame, str) else json.dumps(frame)
    return parse_client_frame(text, now=now)


def error(frame: dict[str, Any] | str, now: datetime = NOW) -> ProtocolError:
    result = parse(frame, now)
    assert isinstance(result, ProtocolError), result
    return result


def event_item(**overrides: Any) -> dict[str, Any]:
    return {"id": "e1", "name": "page_view", "at": "2025-05-31T10:00:00Z", **overrides}


def audio(**overrides: Any) -> dict[str, Any]:
    return {
        "type": "audio",
        "id": "a",
        "encoding": "pcm16",
        "sample_rate": 8000,
        "data": "",
        **overrides,
    }


# valid frames


def test_minimal_hello() -> None:
    frame = parse({"type": "hello"})
    assert isinstance(frame, Hello)
    assert frame.type == "hello"
    assert (frame.token, frame.user, frame.session_id, frame.last_seq) == (None,) * 4


def test_full_hello() -> None:
    frame = parse(
        {
            "type": "hello",
            "token": "abc.def",
            "user": {"external_id": "cust-1", "name": "Dana", "locale": "en-GB"},
            "session_id": SESSION_ID,
            "last_seq": 42,
        }
    )
    assert isinstance(frame, Hello)
    assert frame.token == "abc.def"
    assert frame.user is not None
    assert (frame.user.external_id, frame.user.name, frame.user.locale) == (
        "cust-1",
        "Dana",
        "en-GB",
    )
    assert frame.session_id == SESSION_ID
    assert frame.last_seq == 42


def test_hello_last_seq_bounds() -> None:
    for ok in (0, 2**53):
        frame = parse({"type": "hello", "last_seq": ok})
        assert isinstance(frame, Hello) and frame.last_seq == ok
    for bad in (-1, 2**53 + 1):
        assert error({"type": "hello", "last_seq": bad}).code is ErrorCode.INVALID_FIELD


def test_message() -> None:
    frame = parse({"type": "message", "id": "m1", "text": "Where is my parcel?"})
    assert isinstance(frame, Message)
    assert (frame.type, frame.id, frame.text) == ("message", "m1", "Where is my parcel?")


def test_event_with_props_and_offset() -> None:
    frame = parse(
        {
            "type": "event",
            "id": "e1",
            "name": "add_to_cart",
            "at": "2025-05-31T10:00:00.250+02:00",
            "props": {"sku": "KB-1", "qty": 2, "tags": ["a"], "meta": {"x": None}},
        }
    )
    assert isinstance(frame, Event)
    assert frame.type == "event"
    assert frame.at == datetime(2025, 5, 31, 8, 0, 0, 250000, tzinfo=UTC)
    assert frame.at.utcoffset() == timedelta(hours=2)
    assert frame.props == {"sku": "KB-1", "qty": 2, "tags": ["a"], "meta": {"x": None}}


def test_event_props_default_to_empty() -> None:
    frame = parse({"type": "event", **event_item()})
    assert isinstance(frame, Event)
    assert frame.props == {}


def test_events() -> None:
    frame = parse(
        {"type": "events", "id": "b1", "items": [event_item(id="e1"), event_item(id="e2")]}
    )
    assert isinstance(frame, Events)
    assert frame.id == "b1"
    assert isinstance(frame.items, tuple)
    assert [item.id for item in frame.items] == ["e1", "e2"]


def test_events_id_is_optional() -> None:
    frame = parse({"type": "events", "items": [event_item()]})
    assert isinstance(frame, Events)
    assert frame.id is None


def test_audio_decodes_base64() -> None:
    frame = parse(
        {
            "type": "audio",
            "id": "a1",
            "encoding": "mulaw",
            "sample_rate": 8000,
            "data": "AAD/fwCA/38AAA==",
        }
    )
    assert isinstance(frame, Audio)
    assert (frame.encoding, frame.sample_rate) == ("mulaw", 8000)
    assert frame.data == b"\x00\x00\xff\x7f\x00\x80\xff\x7f\x00\x00"


def test_a_frame_without_part_or_last_is_a_whole_note() -> None:
    frame = parse(audio())
    assert isinstance(frame, Audio)
    assert (frame.part, frame.last) == (0, True)


def test_a_browser_recording_carries_its_own_sample_rate() -> None:
    frame = parse(audio(encoding="webm", sample_rate=None, part=3, last=False, data="GkXfow=="))
    assert isinstance(frame, Audio)
    assert (frame.encoding, frame.sample_rate, frame.part, frame.last) == ("webm", None, 3, False)
    assert frame.data == b"\x1aE\xdf\xa3"


@pytest.mark.parametrize("encoding", ["opus", "mp4", "", "PCM16", 5])
def test_an_unknown_encoding_has_a_code_of_its_own(encoding: object) -> None:
    problem = error(audio(encoding=encoding))
    assert problem.code is ErrorCode.UNSUPPORTED_ENCODING
    assert problem.ref == "a"
    assert "pcm16, mulaw, webm, ogg" in problem.message


def test_a_missing_encoding_is_an_invalid_field() -> None:
    frame = audio()
    del frame["encoding"]
    assert error(frame).code is ErrorCode.INVALID_FIELD


@pytest.mark.parametrize("fields", [{}, {"id": "p1"}])
def test_ping(fields: dict[str, Any]) -> None:
    frame = parse({"type": "ping", **fields})
    assert isinstance(frame, Ping)
    assert frame.id == fields.get("id")


def test_unknown_fields_are_ignored() -> None:
    frame = parse({"type": "message", "id": "m1", "text": "hi", "client_version": "2.1"})
    assert isinstance(frame, Message)
    assert not hasattr(frame, "client_version")


def test_id_length_bounds() -> None:
    assert isinstance(parse({"type": "message", "id": "x" * 128, "text": "hi"}), Message)
    problem = error({"type": "message", "id": "x" * 129, "text": "hi"})
    assert problem.code is ErrorCode.INVALID_FIELD


def test_event_name_length_bounds() -> None:
    assert isinstance(parse({"type": "event", **event_item(name="n" * 64)}), Event)
    problem = error({"type": "event", **event_item(name="n" * 65)})
    assert problem.code is ErrorCode.INVALID_FIELD


# invalid_json


@pytest.mark.parametrize(
    "text",
    ["", " ", "{", "not json", "{'type': 'ping'}", '{"type":"ping",}', '{"type":"ping"} x'],
)
def test_invalid_json(text: str) -> None:
    problem = error(text)
    assert problem.code is ErrorCode.INVALID_JSON
    assert problem.ref is None


# invalid_frame


@pytest.mark.parametrize("text", ["null", "[]", "5", '"hello"', "true", '[{"type":"ping"}]'])
def test_non_object_is_invalid_frame(text: str) -> None:
    problem = error(text)
    assert problem.code is ErrorCode.INVALID_FRAME
    assert "object" in problem.message


@pytest.mark.parametrize(
    "frame", [{}, {"type": 5}, {"type": None}, {"type": ["ping"]}, {"text": "hi"}]
)
def test_missing_or_non_string_type_is_invalid_frame(frame: dict[str, Any]) -> None:
    problem = error(frame)
    assert problem.code is ErrorCode.INVALID_FRAME
    assert "type" in problem.message


def test_invalid_frame_echoes_id() -> None:
    assert error({"id": "m7", "text": "hi"}).ref == "m7"


# unknown_type


@pytest.mark.parametrize("frame_type", ["mesage", "Hello", "", "reply", "welcome"])
def test_unknown_type(frame_type: str) -> None:
    problem = error({"type": frame_type, "id": "x1"})
    assert problem.code is ErrorCode.UNKNOWN_TYPE
    assert problem.ref == "x1"
    assert "known: audio, event, events, hello, message, ping" in problem.message


def test_unknown_type_message_is_bounded() -> None:
    problem = error({"type": "x" * 100_000})
    assert problem.code is ErrorCode.UNKNOWN_TYPE
    assert len(problem.message) < 200


# invalid_field


@pytest.mark.parametrize(
    ("frame", "field"),
    [
        ({"type": "message", "id": "m1"}, "text"),
        ({"type": "message", "text": "hi"}, "id"),
        ({"type": "message", "id": "m1", "text": 5}, "text"),
        ({"type": "message", "id": "m1", "text": ["hi"]}, "text"),
        ({"type": "message", "id": "m1", "text": None}, "text"),
        ({"type": "message", "id": "m1", "text": ""}, "text"),
        ({"type": "message", "id": 7, "text": "hi"}, "id"),
        ({"type": "message", "id": "", "text": "hi"}, "id"),
        ({"type": "hello", "last_seq": "5"}, "last_seq"),
        ({"type": "hello", "last_seq": 5.0}, "last_seq"),
        ({"type": "hello", "last_seq": True}, "last_seq"),
        ({"type": "hello", "session_id": SESSION_ID.upper()}, "session_id"),
        ({"type": "hello", "session_id": "abc"}, "session_id"),
        ({"type": "hello", "token": ""}, "token"),
        ({"type": "hello", "token": "t" * 4097}, "token"),
        ({"type": "hello", "user": "cust-1"}, "user"),
        ({"type": "hello", "user": {"name": "Dana"}}, "user.external_id"),
        ({"type": "hello", "user": {"external_id": 1}}, "user.external_id"),
        ({"type": "hello", "user": {"external_id": "c", "name": "n" * 201}}, "user.name"),
        ({"type": "hello", "user": {"external_id": "c", "locale": "l" * 36}}, "user.locale"),
        ({"type": "event", **event_item(name="")}, "name"),
        ({"type": "event", **event_item(props=[1, 2])}, "props"),
        ({"type": "event", **event_item(props="x")}, "props"),
        ({"type": "event", "name": "n", "at": "2025-05-31T10:00:00Z"}, "id"),
        ({"type": "events", "items": {"id": "e1"}}, "items"),
        ({"type": "events"}, "items"),
        ({"type": "events", "items": [event_item(), {"name": "n"}]}, "items.1.id"),
        ({"type": "events", "items": [event_item(), "e2"]}, "items.1"),
        (audio(sample_rate=44100), "sample_rate"),
        (audio(sample_rate=None), "sample_rate"),
        (audio(encoding="mulaw", sample_rate=None), "sample_rate"),
        (audio(part=-1), "part"),
        (audio(part="1"), "part"),
        (audio(last="true"), "last"),
        (audio(sample_rate="8000"), "sample_rate"),
        (audio(data=5), "data"),
        (audio(data="AAA"), "data"),
        ({"type": "audio", "id": "a", "encoding": "pcm16", "sample_rate": 8000}, "data"),
        ({"type": "ping", "id": 3}, "id"),
    ],
)
def test_invalid_field(frame: dict[str, Any], field: str) -> None:
    problem = error(frame)
    assert problem.code is ErrorCode.INVALID_FIELD
    assert problem.message.startswith(f"{frame['type']}: {field}")


def test_invalid_field_echoes_string_id_only() -> None:
    assert error({"type": "message", "id": "m1", "text": 5}).ref == "m1"
    assert error({"type": "message", "id": 5, "text": "hi"}).ref is None


# text_too_long


def test_text_of_exactly_the_limit_is_accepted() -> None:
    frame = parse({"type": "message", "id": "m1", "text": "a" * MAX_TEXT_CHARS})
    assert isinstance(frame, Message)
    assert len(frame.text) == MAX_TEXT_CHARS == 4000


def test_text_over_the_limit() -> None:
    problem = error({"type": "message", "id": "m1", "text": "a" * (MAX_TEXT_CHARS + 1)})
    assert problem.code is ErrorCode.TEXT_TOO_LONG
    assert problem.ref == "m1"
    assert "4001" in problem.message and "4000" in problem.message


def test_text_limit_counts_characters_not_bytes() -> None:
    assert isinstance(parse({"type": "message", "id": "m1", "text": "é" * 4000}), Message)
    assert isinstance(parse({"type": "message", "id": "m1", "text": "😀" * 4000}), Message)
    problem = error({"type": "message", "id": "m1", "text": "😀" * 4001})
    assert problem.code is ErrorCode.TEXT_TOO_LONG


# invalid_timestamp


@pytest.mark.parametrize(
    "at",
    [
        "2025-05-31T10:00:00",  # no offset
        "2025-05-31",  # a date, not a date-time
        "yesterday",
        "",
        "2025-13-01T00:00:00Z",
        "1999-06-01T00:00:00Z",
        "1999-12-31T23:59:59Z",
        "2000-01-01T00:30:00+01:00",  # 1999-12-31T23:30Z
        (NOW + timedelta(days=2)).isoformat(),
        (NOW + timedelta(days=1, seconds=1)).isoformat(),
        None,
        [2025, 5, 31],
    ],
)
def test_invalid_timestamp(at: Any) -> None:
    problem = error({"type": "event", **event_item(id="e9", at=at)})
    assert problem.code is ErrorCode.INVALID_TIMESTAMP
    assert problem.ref == "e9"


def test_missing_at_is_invalid_timestamp() -> None:
    item = event_item()
    del item["at"]
    assert error({"type": "event", **item}).code is ErrorCode.INVALID_TIMESTAMP


@pytest.mark.parametrize(
    "at",
    [
        "2000-01-01T00:00:00Z",
        "2000-01-01T01:00:00+01:00",
        (NOW + timedelta(days=1)).isoformat(),
        (NOW - timedelta(seconds=1)).astimezone(timezone(timedelta(hours=-7))).isoformat(),
    ],
)
def test_timestamp_bounds_are_inclusive(at: str) -> None:
    frame = parse({"type": "event", **event_item(at=at)})
    assert isinstance(frame, Event), frame


def test_future_is_measured_from_now() -> None:
    at = (NOW + timedelta(days=2)).isoformat()
    later = NOW + timedelta(days=1, hours=1)
    assert isinstance(parse({"type": "event", **event_item(at=at)}, now=later), Event)


def test_default_clock_is_the_current_time() -> None:
    now = datetime.now(UTC)
    soon = (now + timedelta(hours=1)).isoformat()
    far = (now + timedelta(days=2)).isoformat()
    assert isinstance(
        parse_client_frame(json.dumps({"type": "event", **event_item(at=soon)})), Event
    )
    problem = parse_client_frame(json.dumps({"type": "event", **event_item(at=far)}))
    assert isinstance(problem, ProtocolError)
    assert problem.code is ErrorCode.INVALID_TIMESTAMP


def test_one_bad_item_refuses_the_whole_events_frame() -> None:
    items = [event_item(id="e1"), event_item(id="e2", at="1999-01-01T00:00:00Z")]
    problem = error({"type": "events", "id": "b1", "items": items})
    assert problem.code is ErrorCode.INVALID_TIMESTAMP
    assert problem.ref == "b1"
    assert "event 1 (e2)" in problem.message


def test_naive_item_in_events_is_invalid_timestamp() -> None:
    items = [event_item(id="e1"), event_item(id="e2", at="2025-05-31T10:00:00")]
    problem = error({"type": "events", "id": "b1", "items": items})
    assert problem.code is ErrorCode.INVALID_TIMESTAMP
    assert problem.ref == "b1"


def test_numeric_at_is_refused() -> None:
    result = parse({"type": "event", **event_item(at=1748685600)})
    assert isinstance(result, ProtocolError)
    assert result.code is ErrorCode.INVALID_TIMESTAMP


# events limits


def test_events_with_no_items() -> None:
    problem = error({"type": "events", "id": "b1", "items": []})
    assert problem.code is ErrorCode.INVALID_FIELD
    assert problem.ref == "b1"


def test_events_at_the_limit() -> None:
    items = [event_item(id=f"e{i}") for i in range(MAX_EVENTS_PER_FRAME)]
    frame = parse({"type": "events", "items": items})
    assert isinstance(frame, Events)
    assert len(frame.items) == MAX_EVENTS_PER_FRAME == 100


def test_events_over_the_limit() -> None:
    items = [event_item(id=f"e{i}") for i in range(MAX_EVENTS_PER_FRAME + 1)]
    problem = error({"type": "events", "id": "b1", "items": items})
    assert problem.code is ErrorCode.INVALID_FIELD
    assert problem.ref == "b1"
    assert "items" in problem.message


# ref


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ({"type": "nope", "id": "r1"}, ErrorCode.UNKNOWN_TYPE),
        ({"type": 1, "id": "r1"}, ErrorCode.INVALID_FRAME),
        ({"type": "message", "id": "r1"}, ErrorCode.INVALID_FIELD),
        ({"type": "message", "id": "r1", "text": "x" * 4001}, ErrorCode.TEXT_TOO_LONG),
        ({"type": "event", **event_item(id="r1", at="2025-05-31")}, ErrorCode.INVALID_TIMESTAMP),
        ({"type": "events", "id": "r1", "items": []}, ErrorCode.INVALID_FIELD),
        ({"type": "ping", "id": "r1", "extra": {"deep": [1]}, "x": 1, "y": None, "type2": 5}, None),
    ],
)
def test_ref_echoes_the_client_id(frame: dict[str, Any], code: ErrorCode | None) -> None:
    result = parse(frame)
    if code is None:
        assert isinstance(result, Ping) and result.id == "r1"
    else:
        assert isinstance(result, ProtocolError)
        assert result.code is code
        assert result.ref == "r1"


# never raises


def _deep(depth: int) -> str:
    return '{"type":"event","id":"e","name":"n","at":"2025-05-31T10:00:00Z","props":{"a":' + (
        "[" * depth + "]" * depth + "}}"
    )


ODD_INPUTS = [
    "",
    " ",
    "\x00",
    "\ufeff{}",
    "null",
    "[]",
    "{}",
    '{"type":5}',
    '{"type":"ping","id":{"nested":true}}',
    "[" * 100_000 + "]" * 100_000,
    '{"a":' * 10_000 + "1" + "}" * 10_000,
    _deep(50),
    _deep(5_000),
    "1" * 10_000,
    "1e400",
    "-1e400",
    '{"type":"hello","last_seq":' + "9" * 5_000 + "}",
    '{"type":"hello","last_seq":1e400}',
    '{"type":"hello","last_seq":-0}',
    '{"type":"message","id":"a","text":"\\ud800"}',
    '{"type":"message","id":"a","text":"\\u0000"}',
    '{"type":"message","id":"a","text":"x"' + ',"text":"y"' * 1000 + "}",
    '{"type":"events","items":[' + ",".join(["{}"] * 10_000) + "]}",
    '{"type":"event","id":"e","name":"n","at":"9999-12-31T23:59:59+14:00"}',
    '{"type":"event","id":"e","name":"n","at":"0001-01-01T00:00:00-14:00"}',
    '{"type":"event","id":"e","name":"n","at":1e30}',
    '{"type":"event","id":"e","name":"n","at":-1e30}',
    '{"type":"audio","id":"a","encoding":"pcm16","sample_rate":8000,"data":"' + "=" * 999 + '"}',
    '{"type":"hello","user":{"external_id":"x","name":{"a":1}}}',
    '{"type":"' + "\u202e" * 1000 + '"}',
    '"' + "\\" * 3 + '"',
    "{" * 3 + "}" * 2,
]


@pytest.mark.parametrize("text", ODD_INPUTS, ids=lambda t: repr(t[:30]))
def test_never_raises_on_odd_input(text: str) -> None:
    result = parse_client_frame(text, now=NOW)
    assert isinstance(result, (ProtocolError, *FRAME_TYPES))
    if isinstance(result, ProtocolError):
        assert isinstance(result.code, ErrorCode)
        assert isinstance(result.message, str) and result.message


def test_never_raises_on_random_input() -> None:
    rng = random.Random(20250601)
    pieces = [
        "{", "}", "[", "]", ",", ":", '"', "\\", "type", '"type"', '"hello"', '"message"',
        '"event"', '"events"', '"audio"', '"ping"', '"id"', '"text"', '"items"', '"at"',
        '"2025-05-31T10:00:00Z"', "null", "true", "false", "0", "-1", "1e999", "NaN",
        "Infinity", " ", "\n", "é", "😀", "\\u0000", "\\ud83d", "9" * 40,
    ]  # fmt: skip
    for _ in range(3_000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
        result = parse_client_frame(text, now=NOW)
        assert isinstance(result, (ProtocolError, *FRAME_TYPES)), text
    for _ in range(500):
        frame: dict[str, Any] = {"type": rng.choice(["hello", "message", "event", "events"])}
        for key in rng.sample(["id", "text", "name", "at", "items", "props", "last_seq"], 3):
            frame[key] = rng.choice([None, 0, -5, "", "x", [], {}, 2**70, 1.5, "é" * 5000])
        result = parse_client_frame(json.dumps(frame), now=NOW)
        assert isinstance(result, (ProtocolError, *FRAME_TYPES)), frame


def test_never_raises_on_lone_surrogate() -> None:
    result = parse_client_frame('{"type":"message","id":"a","text":"\ud800"}', now=NOW)
    assert isinstance(result, ProtocolError)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_numbers_are_refused(value: str) -> None:
    text = (
        '{"type":"event","id":"e","name":"n","at":"2025-05-31T10:00:00Z","props":{"k":'
        + value
        + "}}"
    )
    result = parse_client_frame(text, now=NOW)
    assert isinstance(result, ProtocolError)
    assert result.code in (ErrorCode.INVALID_JSON, ErrorCode.INVALID_FIELD)


def test_audio_with_non_base64_data_is_refused() -> None:
    result = parse(audio(data="!!!!"))
    assert isinstance(result, ProtocolError)
    assert result.code is ErrorCode.INVALID_FIELD


# serialization


def test_to_dict_starts_with_type_and_seq() -> None:
    out = to_dict(ReplyDelta(turn_id="t1", text="Hel"), 7)
    assert out == {"type": "reply.delta", "seq": 7, "turn_id": "t1", "text": "Hel"}
    assert list(out)[:2] == ["type", "seq"]


def test_ack_omits_none_fields() -> None:
    assert to_dict(Ack(id="m1"), 3) == {"type": "ack", "seq": 3, "id": "m1"}
    assert to_dict(Ack(id=None, stored=2, duplicates=1), 4) == {
        "type": "ack",
        "seq": 4,
        "stored": 2,
        "duplicates": 1,
    }


def test_zero_and_false_are_not_omitted() -> None:
    assert to_dict(Ack(id="e1", stored=0, duplicates=0), 1) == {
        "type": "ack",
        "seq": 1,
        "id": "e1",
        "stored": 0,
        "duplicates": 0,
    }
    assert to_dict(Welcome(session_id="s", user_id="u", resumed=False, last_seq=0), 0) == {
        "type": "welcome",
        "seq": 0,
        "session_id": "s",
        "user_id": "u",
        "resumed": False,
        "last_seq": 0,
    }


def test_reply_without_labels() -> None:
    assert to_dict(Reply(turn_id="t1", text="Hello"), 5) == {
        "type": "reply",
        "seq": 5,
        "turn_id": "t1",
        "text": "Hello",
        "handoff": False,
    }


def test_reply_labels_are_rounded() -> None:
    frame = Reply(
        turn_id="t1",
        text="Hello",
        intent=IntentLabel("billing", 0.123456789),
        emotion=EmotionLabel("neutral", {"neutral": 0.666666, "angry": 0.33333349}),
        handoff=True,
    )
    assert to_dict(frame, 9) == {
        "type": "reply",
        "seq": 9,
        "turn_id": "t1",
        "text": "Hello",
        "intent": {"label": "billing", "confidence": 0.1235},
        "emotion": {"label": "neutral", "scores": {"neutral": 0.6667, "angry": 0.3333}},
        "handoff": True,
    }


def test_operator_frames() -> None:
    assert to_dict(OperatorJoined(), 1) == {"type": "operator.joined", "seq": 1}
    assert to_dict(OperatorJoined(name="Sam"), 2) == {
        "type": "operator.joined",
        "seq": 2,
        "name": "Sam",
    }
    assert to_dict(OperatorMessage(text="Hi"), 3) == {
        "type": "operator.message",
        "seq": 3,
        "text": "Hi",
    }
    assert to_dict(OperatorLeft(), 4) == {"type": "operator.left", "seq": 4}


def test_error_frame_of_protocol_error() -> None:
    frame = ErrorFrame.of(ProtocolError(ErrorCode.INVALID_JSON, "not valid JSON"))
    assert to_dict(frame, 0) == {
        "type": "error",
        "seq": 0,
        "code": "invalid_json",
        "message": "not valid JSON",
    }
    with_ref = ErrorFrame.of(ProtocolError(ErrorCode.TEXT_TOO_LONG, "too long", "m1"))
    assert json.loads(serialize(with_ref, 12)) == {
        "type": "error",
        "seq": 12,
        "code": "text_too_long",
        "message": "too long",
        "ref": "m1",
    }


def test_pong() -> None:
    assert to_dict(Pong(), 0) == {"type": "pong", "seq": 0}
    assert to_dict(Pong(id="p1"), 0) == {"type": "pong", "seq": 0, "id": "p1"}


ALL_SERVER_FRAMES: list[ServerFrame] = [
    Welcome(session_id="s", user_id="u", resumed=True, last_seq=3),
    Ack(id="m1"),
    ReplyDelta(turn_id="t", text="Grüße "),
    Reply(turn_id="t", text="Grüße 😀", intent=IntentLabel("x", 0.5)),
    OperatorJoined(name="Zoë"),
    OperatorMessage(text="¡Hola!"),
    OperatorLeft(),
    ErrorFrame(ErrorCode.INTERNAL, "the turn failed", "m1"),
    Pong(id="p"),
]


@pytest.mark.parametrize("frame", ALL_SERVER_FRAMES, ids=lambda f: f.type)
def test_serialize_is_compact_json_of_to_dict(frame: ServerFrame) -> None:
    text = serialize(frame, 11)
    assert json.loads(text) == to_dict(frame, 11)
    assert json.loads(text)["seq"] == 11
    # Compact: no spaces after separators, non-ASCII written as is.
    assert text == json.dumps(json.loads(text), ensure_ascii=False, separators=(",", ":"))
    assert text.startswith('{"type":"' + frame.type + '","seq":11')


def test_serialize_keeps_non_ascii() -> None:
    text = serialize(OperatorMessage(text="Grüße 😀"), 1)
    assert text == '{"type":"operator.message","seq":1,"text":"Grüße 😀"}'


@pytest.mark.parametrize("codes", [ErrorCode, OperatorErrorCode, VoiceErrorCode])
def test_every_route_has_the_shared_refusals(codes: type[StrEnum]) -> None:
    """The shared reader refuses with these; each route's parser maps them onto its codes."""
    for code in WireCode:
        assert codes(code).value == code.value
