"""The protocol docs stay true: docs/protocol.md's examples parse and cover every frame and error
code; every example in docs/protocol.md, voice.md and operators.md is read by a test, is what
the server writes, and shows only labels the server sends."""

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
from assistant.core.wire import MAX_FRAME_BYTES, MAX_TEXT_CHARS, EmotionLabel, IntentLabel, Pong
from assistant.operators.protocol import (
    ErrorReply,
    OperatorErrorCode,
    OperatorServerFrame,
    SessionState,
    SessionTurn,
)
from assistant.operators.protocol import to_dict as operator_to_dict
from assistant.replies.knowledge_base import SUPPORTED_INTENTS
from assistant.voice.protocol import (
    Transcript,
    VoiceClear,
    VoiceErrorCode,
    VoiceErrorFrame,
    VoiceReply,
    VoiceServerFrame,
    VoiceStarted,
    voice_to_dict,
)
from fusion import EVENT_CATALOGUE, SERVICE_EMOTIONS
from tests.conftest import ClientFactory

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
    if origin is tuple:
        item_hint = typing.get_args(hint)[0]
        return isinstance(value, tuple) and all(_conforms(v, item_hint) for v in value)
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
    if isinstance(kwargs.get("suggestions"), list):
        kwargs["suggestions"] = tuple(kwargs["suggestions"])
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


# Every JSON example in docs/protocol.md, docs/voice.md and docs/operators.md: tagged for the
# test that reads it, a frame the server can send, and labelled as the server labels.

DOCS_DIR = DOC_PATH.parent
EXAMPLE_TAGS: dict[str, frozenset[str]] = {
    "protocol.md": frozenset({"client", "server"}),
    "voice.md": frozenset({"twilio-in", "twilio-out", "voice-client", "voice-server"}),
    "operators.md": frozenset({"operator-client", "operator-server"}),
}
_FENCE = re.compile(r"^```(?P<info>[^\n]*)\n(?P<body>.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def _fences(doc: str) -> list[tuple[str, str]]:
    """Every fenced block of a doc: its info string (`json server`) and its body."""
    text = (DOCS_DIR / doc).read_text(encoding="utf-8")
    return [(m["info"].strip(), m["body"]) for m in _FENCE.finditer(text)]


def _examples(doc: str, tag: str) -> list[dict[str, Any]]:
    return [json.loads(body) for info, body in _fences(doc) if info == f"json {tag}"]


def _all_examples() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (doc, tag, example)
        for doc, tags in EXAMPLE_TAGS.items()
        for tag in sorted(tags)
        for example in _examples(doc, tag)
    ]


@pytest.mark.parametrize("doc", sorted(EXAMPLE_TAGS))
def test_every_json_block_is_read_by_a_test(doc: str) -> None:
    """A block the tests do not read (untagged, mistagged, or JSON under another language)
    could drift from the server unnoticed."""
    fences = _fences(doc)
    json_blocks = [(info, body) for info, body in fences if info.split(" ", 1)[0] == "json"]
    assert json_blocks, f"{doc} has no JSON examples"
    for info, body in json_blocks:
        assert info in {f"json {tag}" for tag in EXAMPLE_TAGS[doc]}, (doc, info)
        assert isinstance(json.loads(body), dict), (doc, body[:60])
    for info, body in fences:
        if not info.startswith("json"):
            assert not body.lstrip().startswith("{"), f"{doc}: JSON in a ```{info} block"


def _labels(value: Any) -> tuple[list[str], list[tuple[str, ...]], list[str]]:
    """The emotion labels, the key sets of emotion scores, and the intent labels that `value`
    (an example, or anything in it) shows, wherever they sit."""
    emotions: list[str] = []
    scores: list[tuple[str, ...]] = []
    intents: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item)
            return
        if not isinstance(node, dict):
            return
        for key, item in node.items():
            label = item.get("label") if isinstance(item, dict) else item
            if key == "emotion" and isinstance(label, str):
                emotions.append(label)
            elif key == "intent" and isinstance(label, str):
                intents.append(label)
            elif key in ("scores", "emotion_scores") and isinstance(item, dict):
                scores.append(tuple(item))
            elif key == "top_intents":
                intents.extend(entry["label"] for entry in item)
            walk(item)

    walk(value)
    return emotions, scores, intents


def test_every_label_in_the_docs_is_one_the_server_sends() -> None:
    """Emotions are the service emotions (every score set has all of them, as the server
    sends it); intents are the labels the shipped knowledge base answers."""
    emotions_seen: set[str] = set()
    docs_with: dict[str, set[str]] = {"emotion": set(), "intent": set()}
    for doc, tag, example in _all_examples():
        emotions, scores, intents = _labels(example)
        where = f"{doc} {tag}: {json.dumps(example)[:80]}"
        for label in emotions:
            assert label in SERVICE_EMOTIONS, f"{where}: emotion {label!r}"
        for keys in scores:
            assert sorted(keys) == sorted(SERVICE_EMOTIONS), f"{where}: scores {keys}"
        for label in intents:
            assert label in SUPPORTED_INTENTS, f"{where}: intent {label!r}"
        emotions_seen.update(emotions)
        if emotions:
            docs_with["emotion"].add(doc)
        if intents:
            docs_with["intent"].add(doc)
    # Not vacuous: every doc shows labels, and more than one emotion is shown.
    assert docs_with == {"emotion": set(EXAMPLE_TAGS), "intent": set(EXAMPLE_TAGS)}
    assert len(emotions_seen) > 1


def test_documented_behaviour_events_are_in_the_catalogue() -> None:
    """Unknown event names are accepted (and embedded by hashing), but the docs show the
    names the profile summary and the fusion model know."""
    names: list[str] = []
    for example in _examples("protocol.md", "client"):
        if example["type"] == "event":
            names.append(example["name"])
        elif example["type"] == "events":
            names.extend(item["name"] for item in example["items"])
    for example in _examples("operators.md", "operator-server"):
        profile = example.get("profile")
        if isinstance(profile, dict):
            names.extend(event["name"] for event in profile["events"])
    assert len(names) >= 4
    assert set(names) <= set(EVENT_CATALOGUE), set(names) - set(EVENT_CATALOGUE)


def _voice_frame(example: dict[str, Any]) -> VoiceServerFrame:
    fields = {k: v for k, v in example.items() if k != "type"}
    if isinstance(fields.get("intent"), dict):
        fields["intent"] = IntentLabel(**fields["intent"])
    if isinstance(fields.get("emotion"), dict):
        fields["emotion"] = EmotionLabel(**fields["emotion"])
    if isinstance(fields.get("suggestions"), list):
        fields["suggestions"] = tuple(fields["suggestions"])
    classes: dict[str, type[Any]] = {
        "started": VoiceStarted,
        "transcript": Transcript,
        "reply": VoiceReply,
        "clear": VoiceClear,
    }
    if example["type"] == "error":
        return VoiceErrorFrame(VoiceErrorCode(fields["code"]), fields["message"])
    frame: VoiceServerFrame = classes[example["type"]](**fields)
    return frame


def test_native_voice_server_examples_are_what_the_server_writes() -> None:
    examples = _examples("voice.md", "voice-server")
    assert {e["type"] for e in examples} == {"started", "transcript", "reply", "clear", "error"}
    for example in examples:
        assert voice_to_dict(_voice_frame(example)) == example


def test_operator_push_frames_are_what_the_server_writes() -> None:
    """`session.turn`, `session.state`, `error` and `pong` have frame classes; a `result`
    holds whatever its command answers (tests/test_operators.py checks those)."""
    pushed = 0
    for example in _examples("operators.md", "operator-server"):
        fields = {k: v for k, v in example.items() if k not in ("type", "seq")}
        frame: OperatorServerFrame
        if example["type"] == "session.turn":
            frame = SessionTurn(**fields)
        elif example["type"] == "session.state":
            frame = SessionState(**fields)
        elif example["type"] == "error":
            frame = ErrorReply(OperatorErrorCode(fields.pop("code")), **fields)
        elif example["type"] == "pong":
            frame = Pong(**fields)
        else:
            assert example["type"] == "result"
            continue
        assert operator_to_dict(frame, example["seq"]) == example
        pushed += 1
    assert pushed >= 4


async def test_the_walkthrough_is_what_a_server_sends(open_client: ClientFactory) -> None:
    """docs/protocol.md's conversation, start to finish, sent to a real server: the same
    frames in the same order, the same reply text and labels (ids and scores differ)."""
    section = DOC.split("## A conversation, start to finish", 1)[1].split("\n## ", 1)[0]
    shown = [
        (m["tag"].strip(), json.loads(m["body"]))
        for m in _BLOCK.finditer(section)
        if m["tag"].strip() in ("client", "server")
    ]
    client = await open_client()
    received: list[dict[str, Any]] = []
    for tag, frame in shown:
        if tag == "client":
            await client.send(frame)
            continue
        got = await client.recv()
        received.append(got)
        assert (got["type"], got["seq"]) == (frame["type"], frame["seq"]), (got, frame)
        assert set(got) == set(frame), (got, frame)
        for key in ("text", "handoff", "resumed", "last_seq", "id"):
            assert got.get(key) == frame.get(key), key
        for key in ("intent", "emotion"):
            if key in frame:
                assert got[key]["label"] == frame[key]["label"], key
    assert [f["type"] for f in received] == ["welcome", "ack", "reply.delta", "reply"]
