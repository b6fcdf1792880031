"""docs/protocol.md stays true: its examples parse, and it covers every frame and error code."""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from pathlib import Path
from typing import Any

import pytest

from assistant.chat import protocol
from assistant.chat.protocol import (
    MAX_EVENTS_PER_FRAME,
    ClientFrame,
    ErrorCode,
    ProtocolError,
    ServerFrame,
    parse_client_frame,
    to_dict,
)
from assistant.chat.widget_tokens import Claims, verify_token
from assistant.core.wire import MAX_FRAME_BYTES, MAX_TEXT_CHARS, EmotionLabel, IntentLabel

DOC_PATH = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
DOC = DOC_PATH.read_text(encoding="utf-8")

_BLOCK = re.compile(r"^```json(?P<tag>[^\n]*)\n(?P<body>.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
EXAMPLE_SECRET = "example-secret"

# Frames that belong to the connection, not the session: always seq 0.
CONNECTION_SCOPED = {"welcome", "pong"}


def _blocks(tag: str) -> list[str]:
    return [m["body"] for m in _BLOCK.finditer(DOC) if m["tag"].strip() == tag]


CLIENT_EXAMPLES = _blocks("client")
SERVER_EXAMPLES = _blocks("server")

CLIENT_MODELS: dict[str, type[Any]] = {
    typing.get_args(model.model_fields["type"].annotation)[0]: model
    for model in typing.get_args(ClientFrame)
}
SERVER_CLASSES: dict[str, type[Any]] = {cls.type: cls for cls in typing.get_args(ServerFrame)}


def _example_id(body: str) -> str:
    return body.strip()[:60]


def test_every_json_block_is_a_tagged_example() -> None:
    tags = [m["tag"].strip() for m in _BLOCK.finditer(DOC)]
    assert tags, "docs/protocol.md has no JSON examples"
    assert set(tags) <= {"client", "server"}, tags
    assert len(CLIENT_EXAMPLES) + len(SERVER_EXAMPLES) == len(tags)


def test_the_maps_of_frame_types_are_complete() -> None:
    assert set(CLIENT_MODELS) == {"hello", "message", "event", "events", "audio", "ping"}
    assert set(SERVER_CLASSES) == {
        "welcome",
        "ack",
        "reply.delta",
        "reply",
        "operator.joined",
        "operator.message",
        "operator.left",
        "error",
        "pong",
    }


@pytest.mark.parametrize("body", CLIENT_EXAMPLES, ids=_example_id)
def test_client_example_parses(body: str) -> None:
    raw = json.loads(body)
    assert isinstance(raw, dict)
    frame = parse_client_frame(body)
    assert not isinstance(frame, ProtocolError), frame
    assert isinstance(frame, CLIENT_MODELS[raw["type"]])
    assert frame.type == raw["type"]
    assert len(body.encode("utf-8")) <= MAX_FRAME_BYTES


def _conforms(value: Any, hint: Any) -> bool:
    """Whether `value` (a field of a constructed server frame) matches its type hint."""
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        return any(_conforms(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if isinstance(hint, typing.TypeVar):
        # The error frame's code: each route binds it to its own codes.
        return _conforms(value, hint.__bound__)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if origin is dict:
        key_hint, value_hint = typing.get_args(hint)
        return isinstance(value, dict) and all(
            _conforms(k, key_hint) and _conforms(v, value_hint) for k, v in value.items()
        )
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(value, hint):
            return False
        hints = typing.get_type_hints(hint)
        return all(
            _conforms(getattr(value, f.name), hints[f.name]) for f in dataclasses.fields(hint)
        )
    if isinstance(hint, type):
        return isinstance(value, hint)
    raise AssertionError(f"no rule for type hint {hint!r}")


def _build_server_frame(cls: type[Any], fields: dict[str, Any]) -> Any:
    """The server frame dataclass an example describes, with nested values typed.

    A field absent from the example is None, since `to_dict` leaves out None values.
    """
    kwargs = dict(fields)
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name not in kwargs and _conforms(None, hints[field.name]):
            kwargs[field.name] = None
    if isinstance(kwargs.get("intent"), dict):
        kwargs["intent"] = IntentLabel(**kwargs["intent"])
    if isinstance(kwargs.get("emotion"), dict):
        kwargs["emotion"] = EmotionLabel(**kwargs["emotion"])
    if "code" in kwargs:
        kwargs["code"] = ErrorCode(kwargs["code"])
    return cls(**kwargs)


@pytest.mark.parametrize("body", SERVER_EXAMPLES, ids=_example_id)
def test_server_example_is_a_frame_the_server_can_send(body: str) -> None:
    example = json.loads(body)
    assert isinstance(example, dict)
    assert isinstance(example.get("type"), str)
    seq = example.get("seq")
    assert isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0
    frame_type = example["type"]
    assert frame_type in SERVER_CLASSES, f"{frame_type!r} is not a server frame type"
    cls = SERVER_CLASSES[frame_type]

    fields = {k: v for k, v in example.items() if k not in ("type", "seq")}
    producible = {field.name for field in dataclasses.fields(cls)}
    assert set(fields) <= producible, f"{frame_type} cannot have {set(fields) - producible}"
    frame = _build_server_frame(cls, fields)

    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        value = getattr(frame, field.name)
        assert _conforms(value, hints[field.name]), f"{frame_type}.{field.name} = {value!r}"

    # Exactly what the server would write for that frame: same keys, same values.
    assert to_dict(frame, seq) == example
    assert json.loads(protocol.serialize(frame, seq)) == example

    if frame_type in CONNECTION_SCOPED:
        assert seq == 0, f"{frame_type} is connection-scoped and always has seq 0"
    elif frame_type != "error":
        assert seq >= 1, f"{frame_type} is a session frame, numbered from 1"


def test_every_client_frame_type_has_an_example() -> None:
    documented = {json.loads(body)["type"] for body in CLIENT_EXAMPLES}
    assert documented == set(CLIENT_MODELS)


def test_every_server_frame_type_has_an_example() -> None:
    documented = {json.loads(body)["type"] for body in SERVER_EXAMPLES}
    assert documented == set(SERVER_CLASSES)


def test_every_frame_type_has_a_section() -> None:
    headings = re.findall(r"^#{2,4} (.+)$", DOC, re.MULTILINE)
    for frame_type in [*CLIENT_MODELS, *SERVER_CLASSES]:
        assert any(f"`{frame_type}`" in heading for heading in headings), frame_type


def test_error_code_table_lists_exactly_the_error_codes() -> None:
    section = DOC.split("## Error codes", 1)[1].split("\n## ", 1)[0]
    table_codes = re.findall(r"^\|\s*`([a-z_]+)`\s*\|", section, re.MULTILINE)
    assert len(table_codes) == len(set(table_codes)), "a code is listed twice"
    assert set(table_codes) == {code.value for code in ErrorCode}


def test_ack_examples_show_events_counts() -> None:
    acks = [json.loads(b) for b in SERVER_EXAMPLES if json.loads(b)["type"] == "ack"]
    assert any("stored" in a and "duplicates" in a for a in acks)
    assert any("stored" not in a for a in acks)


def test_error_examples_cover_both_scopes() -> None:
    errors = [json.loads(b) for b in SERVER_EXAMPLES if json.loads(b)["type"] == "error"]
    assert any(e["seq"] == 0 for e in errors)
    assert any(e["seq"] > 0 for e in errors)


def test_documented_limits_match_the_code() -> None:
    assert f"{MAX_TEXT_CHARS:,} characters" in DOC
    assert f"1 to {MAX_EVENTS_PER_FRAME}" in DOC
    assert f"{MAX_FRAME_BYTES // 1024} KiB ({MAX_FRAME_BYTES:,} bytes)" in DOC
    assert "2000-01-01" in DOC and "now + 1 day" in DOC
    for close_code in ("1000", "1008", "1009", "1013"):
        assert re.search(rf"^\| {close_code} \|", DOC, re.MULTILINE), close_code


def test_documented_example_token_verifies() -> None:
    tokens = [json.loads(b)["token"] for b in CLIENT_EXAMPLES if "token" in json.loads(b)]
    assert tokens
    for token in tokens:
        claims = verify_token(EXAMPLE_SECRET, token, now=0)
        assert isinstance(claims, Claims), claims
        assert f'"sub":"{claims.external_id}"' in DOC
        assert f'"exp":{claims.expires_at}' in DOC


def test_documented_reply_text_matches_deltas() -> None:
    """The walk-through's deltas add up to its reply, as the server streams them."""
    frames = [json.loads(b) for b in SERVER_EXAMPLES]
    by_turn: dict[str, list[dict[str, Any]]] = {}
    for frame in frames:
        if frame["type"] in ("reply.delta", "reply"):
            by_turn.setdefault(frame["turn_id"], []).append(frame)
    # A turn shown whole: its deltas and its reply carry consecutive seq numbers.
    complete = [
        fs
        for fs in by_turn.values()
        if len(fs) > 1
        and fs[-1]["type"] == "reply"
        and [f["seq"] for f in fs] == list(range(fs[0]["seq"], fs[0]["seq"] + len(fs)))
    ]
    assert complete
    for turn in complete:
        assert all(f["type"] == "reply.delta" for f in turn[:-1])
        assert "".join(f["text"] for f in turn[:-1]) == turn[-1]["text"]
