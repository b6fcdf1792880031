"""Generated hostile frames for the WebSocket routes, and a client that throws them at a server.

Shared by tests/test_fuzz.py (a few hundred examples per route in CI) and bench/fuzz.py
(10,000 or more per route). An example is a short sequence of frames sent on one connection,
which is kept from one example to the next until the server closes it or the example asks for
a fresh one. Frames are drawn from: arbitrary JSON, frames of every known type with fields of
the wrong type or out of range, huge numbers, deep nesting, odd unicode (lone surrogates,
controls, bidi marks), invalid UTF-8 in text frames, binary garbage, oversized frames, and
valid frames in any order (a message before hello, hello twice, auth after a command, media
before a call's start).

After each frame the client waits for a barrier: on /chat and /operator a `ping` frame with a
fresh id and its `pong`, on the voice routes (whose protocols have no ping) a WebSocket ping.
Every frame the server sends on the way must be well formed and must not be an `internal`
error; a close must carry one of the codes the protocols document for client mistakes.
Anything else raises `FuzzFailure`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from websockets.asyncio.client import connect as connect_async
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.sync.client import ClientConnection, connect

from assistant import issue_token
from assistant.core.wire import finite_json
from server import RunningServer
from tests.support.operator_helpers import operator_client

# Close codes a server may use on a client that misbehaves: 1000 (another connection resumed
# the session; a call stopped), 1003 (a voice call in an unsupported audio format), 1007
# (invalid UTF-8), 1008 (policy: refused identity), 1009 (frame too big), 1013 (try again
# later). 1011 (an unexpected error in the server) and 1006 (no close frame: the server died)
# are failures.
ALLOWED_CLOSE_CODES = frozenset({1000, 1003, 1007, 1008, 1009, 1013})
RECV_TIMEOUT_S = 60.0
OVERSIZED = 70 * 1024

CHAT_FIELDS: Mapping[str, tuple[str, ...]] = {
    "hello": ("token", "user", "session_id", "last_seq"),
    "message": ("id", "text"),
    "event": ("id", "name", "at", "props"),
    "events": ("id", "items"),
    "audio": ("id", "encoding", "sample_rate", "data"),
    "ping": ("id",),
}
OPERATOR_FIELDS: Mapping[str, tuple[str, ...]] = {
    "auth": ("id", "token"),
    "ping": ("id",),
    "profiles.search": (
        "id",
        "q",
        "emotion",
        "intent",
        "seen_after",
        "seen_before",
        "limit",
        "cursor",
    ),
    "profile.get": ("id", "user_id"),
    "profile.export": ("id", "user_id"),
    "profile.erase": ("id", "user_id"),
    "sessions.list": ("id",),
    "session.watch": ("id", "session_id"),
    "session.unwatch": ("id", "session_id"),
    "session.takeover": ("id", "session_id"),
    "session.say": ("id", "session_id", "text"),
    "session.release": ("id", "session_id"),
    "turn.relabel": ("id", "turn_id", "intent", "emotion"),
    "operators.list": ("id",),
    "operators.create": ("id", "name", "role"),
    "operators.revoke": ("id", "name"),
}
CHAT_SERVER_TYPES = frozenset(
    {
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
)
OPERATOR_SERVER_TYPES = frozenset({"result", "error", "pong", "session.turn", "session.state"})
TWILIO_FIELDS: Mapping[str, tuple[str, ...]] = {
    "connected": ("protocol", "version"),
    "start": ("sequenceNumber", "streamSid", "start"),
    "media": ("sequenceNumber", "streamSid", "media"),
    "dtmf": ("sequenceNumber", "streamSid", "dtmf"),
    "mark": ("sequenceNumber", "streamSid", "mark"),
    "stop": ("sequenceNumber", "streamSid", "stop"),
}
VOICE_FIELDS: Mapping[str, tuple[str, ...]] = {
    "start": ("token", "user", "encoding", "sample_rate"),
    "dtmf": ("digit",),
    "stop": (),
}


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """One route's frames, as far as fuzzing needs to know them."""

    path: str
    fields: Mapping[str, tuple[str, ...]]
    server_types: frozenset[str]
    type_key: str = "type"  # Twilio names its frames' kind "event"
    # Server frames carry an integer seq, and a {"type": "ping", "id"} frame gets a pong.
    numbered: bool = True
    audio_out: bool = False  # the server may send binary frames (speech)


CHAT = RouteSpec("/chat", CHAT_FIELDS, CHAT_SERVER_TYPES)
OPERATOR = RouteSpec("/operator", OPERATOR_FIELDS, OPERATOR_SERVER_TYPES)
TWILIO = RouteSpec(
    "/voice/twilio",
    TWILIO_FIELDS,
    frozenset({"media", "mark", "clear"}),
    type_key="event",
    numbered=False,
)
VOICE = RouteSpec(
    "/voice",
    VOICE_FIELDS,
    frozenset({"started", "transcript", "reply", "clear", "error"}),
    numbered=False,
    audio_out=True,
)


class FuzzFailure(AssertionError):
    """The server did something the protocol does not allow for any input."""


@dataclass(frozen=True, slots=True)
class Send:
    """One WebSocket frame: `str` as text, `bytes` as binary unless `as_text` (invalid UTF-8)."""

    data: str | bytes
    as_text: bool = False


@dataclass(frozen=True, slots=True)
class Example:
    fresh: bool  # start on a new connection
    opening: bool  # send the route's valid opening frame (hello or auth) first
    frames: tuple[Send, ...]


# values


ODD_CHARACTERS = (
    "\x00",
    "\x7f",
    "\u0085",
    "\u200b",
    "\u200d",
    "\u202e",
    "\u2028",
    "\ufeff",
    "\ufffd",
    "\uffff",
    "\U0010ffff",
    "\U0001f600",
    "\U0001f469\u200d\U0001f4bb",
    "e\u0301",
)
# Lone surrogates make the whole frame invalid JSON for the parser: they get a branch of
# their own instead of turning up in every string.
LONE_SURROGATES = ("\ud800", "\udfff", "\udc80\ud800", "a\udbff")

odd_text = st.one_of(
    st.text(max_size=40),
    st.text(st.characters(categories=["Co", "Cn", "Cc", "Cf", "Zl", "Zp", "Mn"]), max_size=20),
    st.lists(st.sampled_from(ODD_CHARACTERS), max_size=8).map("".join),
)
huge_numbers = st.one_of(
    st.integers(min_value=-(2**128), max_value=2**128),
    st.sampled_from([2**53, 2**53 + 1, 2**63, 2**64, -(2**63) - 1, 10**100, -(10**100)]),
    st.floats(allow_nan=False, allow_infinity=False),
)
scalars = st.one_of(st.none(), st.booleans(), huge_numbers, odd_text)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(odd_text, children, max_size=4)
    ),
    max_leaves=12,
)


def _timestamps() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.just(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())),
        st.datetimes().map(lambda d: d.isoformat()),
        st.sampled_from(
            [
                "2026-02-30T10:00:00Z",
                "0001-01-01T00:00:00+00:00",
                "9999-12-31T23:59:59+14:00",
                "2026-01-01T10:00:00",
                "yesterday",
                "",
            ]
        ),
        json_values,
    )


def _mostly(usual: st.SearchStrategy[Any], odd: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`usual` three times in four, so that checks further down get reached too."""
    return st.one_of(usual, usual, usual, odd)


def _hex_ids() -> st.SearchStrategy[str]:
    return st.text("0123456789abcdef", min_size=32, max_size=32)


# Plausible values per field name: mostly near the contract, sometimes anything at all.
PLAUSIBLE: Mapping[str, st.SearchStrategy[Any]] = {
    "id": st.one_of(st.text(min_size=1, max_size=12), st.text(min_size=120, max_size=140)),
    "text": st.one_of(
        st.just("Where is my card?"), odd_text, st.text(min_size=3990, max_size=4010)
    ),
    "token": st.one_of(odd_text, st.text("abcdefghijklmnopqrstuvwxyz0123456789-_.", max_size=80)),
    "user": st.one_of(
        st.fixed_dictionaries({"external_id": odd_text}, optional={"name": odd_text}),
        json_values,
    ),
    "session_id": st.one_of(_hex_ids(), odd_text),
    "last_seq": huge_numbers,
    "name": st.one_of(st.sampled_from(["page_view", "cart_add", "payment_failed"]), odd_text),
    "at": _timestamps(),
    "props": st.dictionaries(odd_text, json_values, max_size=5),
    "items": st.lists(
        st.fixed_dictionaries(
            {
                "id": st.text(min_size=1, max_size=8),
                "name": st.just("page_view"),
                "at": _timestamps(),
            },
            optional={"props": json_values},
        ),
        max_size=3,
    ),
    "encoding": st.sampled_from(["pcm16", "mulaw", "opus", ""]),
    "sample_rate": st.one_of(st.sampled_from([8000, 16000, 44100]), huge_numbers),
    "data": st.one_of(st.binary(max_size=64).map(lambda b: b.hex()), odd_text),
    "q": odd_text,
    "emotion": odd_text,
    "intent": odd_text,
    "seen_after": _timestamps(),
    "seen_before": _timestamps(),
    "limit": huge_numbers,
    "cursor": odd_text,
    "user_id": st.one_of(_hex_ids(), odd_text),
    "turn_id": st.one_of(_hex_ids(), odd_text),
    "role": st.sampled_from(["viewer", "agent", "admin", "root", ""]),
    # Twilio Media Streams
    "protocol": _mostly(st.just("Call"), odd_text),
    "version": _mostly(st.just("1.0.0"), odd_text),
    "sequenceNumber": _mostly(st.integers(0, 10**6).map(str), st.one_of(huge_numbers, odd_text)),
    "streamSid": _mostly(st.just("MZfuzz"), odd_text),
    "start": st.fixed_dictionaries(
        {
            "accountSid": st.just("ACfuzz"),
            "callSid": st.just("CAfuzz"),
            "tracks": _mostly(st.just(["inbound"]), json_values),
            "mediaFormat": st.one_of(
                st.just({"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}),
                st.fixed_dictionaries(
                    {
                        "encoding": st.sampled_from(["audio/x-mulaw", "audio/l16", ""]),
                        "sampleRate": huge_numbers,
                        "channels": st.integers(-1, 3),
                    }
                ),
            ),
            "customParameters": _mostly(
                st.dictionaries(st.sampled_from(["external_id", "token", "name"]), odd_text),
                json_values,
            ),
        }
    ),
    "media": st.fixed_dictionaries(
        {
            "track": st.sampled_from(["inbound", "outbound", ""]),
            "chunk": st.integers(0, 10**6).map(str),
            "timestamp": st.integers(0, 10**9).map(str),
            "payload": _mostly(
                st.binary(min_size=0, max_size=320).map(lambda b: base64.b64encode(b).decode()),
                odd_text,
            ),
        }
    ),
    "dtmf": st.fixed_dictionaries(
        {
            "track": st.just("inbound_track"),
            "digit": st.one_of(st.sampled_from("0123456789*#"), odd_text),
        }
    ),
    "mark": st.fixed_dictionaries({"name": _mostly(st.just("reply-u1"), odd_text)}),
    "stop": st.fixed_dictionaries(
        {"accountSid": st.just("ACfuzz"), "callSid": _mostly(st.just("CAfuzz"), odd_text)}
    ),
    # /voice
    "digit": st.one_of(st.sampled_from("0123456789*#"), odd_text),
}


def _typed_frame(spec: RouteSpec) -> st.SearchStrategy[dict[str, Any]]:
    """A frame of a known type whose fields are plausible, missing, mistyped or extra."""
    types, key = spec.fields, spec.type_key

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        kind = draw(st.sampled_from(sorted(types)))
        frame: dict[str, Any] = {key: kind}
        for name in types[kind]:
            # Hypothesis favours 0 (the simplest choice): let 0 mean a plausible value.
            choice = draw(st.integers(0, 9))
            if choice == 8:
                continue  # missing
            frame[name] = draw(json_values if choice == 9 else PLAUSIBLE[name])
        if draw(st.integers(0, 3)) == 3:
            frame.update(draw(st.dictionaries(odd_text, json_values, max_size=2)))
        if draw(st.integers(0, 19)) == 19:
            frame[key] = draw(st.one_of(odd_text, json_values))
        return frame

    return build()


def _encode(value: Any, ascii_only: bool) -> str:
    # A str holding lone surrogates cannot go out as UTF-8: it travels \u-escaped instead.
    text = json.dumps(value, ensure_ascii=ascii_only, allow_nan=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, ensure_ascii=True, allow_nan=False)
    return text


RAW_TEXTS = (
    "",
    " ",
    "{",
    "}",
    "null",
    "[]",
    "{}",
    '"type"',
    '{"type": }',
    '{"type": "message", "id": "x", "text": "a"',
    '{"type": "message"} trailing',
    "\ufeff{}",
    '{"type":"message","type":"ping"}',
    '{"type": NaN}',
    '{"type": "ping", "id": Infinity}',
    '{"last_seq": 1e400, "type": "hello"}',
    '{"type": "ping", "id": -0.0e-999999}',
    '{"type": "hello", "last_seq": ' + "9" * 5000 + "}",
    '{"type": "ping", "id": "\\ud800"}',
    '{"type": "message", "id": "s", "text": "\\udfff\\ud800"}',
    '{"\\u0000": "\\u0000", "type": "ping"}',
)


def _nested(depth: int, array: bool) -> str:
    if array:
        return "[" * depth + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


def frames(spec: RouteSpec) -> st.SearchStrategy[Send]:
    """One hostile frame for the route."""
    dicts = _typed_frame(spec).filter(finite_json)
    typed = st.builds(
        lambda value, ascii_only: Send(_encode(value, ascii_only)), dicts, st.booleans()
    )
    surrogate = st.builds(
        lambda value, odd: Send(_encode({**value, "text": odd, "id": odd}, True)),
        dicts,
        st.sampled_from(LONE_SURROGATES),
    )
    anything = st.builds(lambda value: Send(_encode(value, True)), json_values.filter(finite_json))
    invalid_utf8 = st.binary(min_size=1, max_size=64).map(
        lambda b: Send(b + b"\xff\xfe", as_text=True)
    )
    # Percentages: mostly frames of known types, so that most examples reach a live session;
    # the two kinds that end the connection (invalid UTF-8: 1007, too big: 1009) stay rare.
    mix: tuple[tuple[int, st.SearchStrategy[Send]], ...] = (
        (66, typed),
        (5, anything),
        (5, st.sampled_from(RAW_TEXTS).map(Send)),
        (4, st.builds(_nested, st.integers(1, 20_000), st.booleans()).map(Send)),
        (4, st.binary(max_size=256).map(Send)),
        (4, st.text(max_size=200).map(Send)),
        (4, surrogate),
        (4, invalid_utf8),
        (4, st.just(Send("x" * OVERSIZED))),
    )
    bounds = [sum(share for share, _ in mix[: i + 1]) for i in range(len(mix))]

    def pick(roll: int) -> st.SearchStrategy[Send]:
        return next(
            strategy for bound, (_, strategy) in zip(bounds, mix, strict=True) if roll < bound
        )

    return st.integers(0, bounds[-1] - 1).flatmap(pick)


def examples(spec: RouteSpec) -> st.SearchStrategy[Example]:
    return st.builds(
        Example,
        fresh=st.integers(0, 7).map(lambda n: n == 7),
        opening=st.booleans(),
        frames=st.lists(frames(spec), min_size=1, max_size=4).map(tuple),
    )


# the client


@dataclass
class FuzzStats:
    examples: int = 0
    frames: int = 0
    connections: int = 0
    answers: Counter[str] = field(default_factory=Counter)
    closes: Counter[int] = field(default_factory=Counter)

    def summary(self) -> dict[str, Any]:
        return {
            "examples": self.examples,
            "frames": self.frames,
            "connections": self.connections,
            "answers": dict(sorted(self.answers.items())),
            "closes": {str(k): v for k, v in sorted(self.closes.items())},
        }


class RouteFuzzer:
    """Sends examples to one route over a kept connection and checks every answer.

    `opening` holds the route's valid first frames (a hello, an auth with a good key, a call's
    start) and `opened` tells whether a server frame says the opening was answered; with no
    `opened` (Twilio answers a start with nothing) the barrier that follows suffices.
    """

    def __init__(
        self,
        url: str,
        spec: RouteSpec,
        *,
        opening: tuple[str, ...],
        opened: Callable[[dict[str, Any]], bool] | None = None,
    ) -> None:
        self.url = url + spec.path
        self.spec = spec
        self.opening = opening
        self.opened = opened
        self.stats = FuzzStats()
        self._ws: ClientConnection | None = None
        self._barriers = 0

    def close(self) -> None:
        if self._ws is not None:
            self._ws.close()
            self._ws = None

    def run(self, example: Example) -> None:
        self.stats.examples += 1
        if example.fresh:
            self.close()
        if example.opening:
            self._open()
        for frame in example.frames:
            self.stats.frames += 1
            ws = self._connection()
            try:
                ws.send(frame.data, text=True if frame.as_text else None)
            except ConnectionClosed as exc:
                self._closed(exc)
                continue
            self._barrier()

    def _connection(self) -> ClientConnection:
        if self._ws is None:
            try:
                self._ws = connect(
                    self.url, max_size=None, open_timeout=30, close_timeout=2, legacy=True
                )
            except (OSError, InvalidHandshake) as exc:
                raise FuzzFailure(f"the server refused a new connection: {exc!r}") from exc
            self.stats.connections += 1
        return self._ws

    def _open(self) -> None:
        ws = self._connection()
        try:
            for text in self.opening:
                ws.send(text)
            while self.opened is not None:
                frame = self._recv(ws, RECV_TIMEOUT_S)
                if frame is not None and self.opened(frame):
                    break
        except ConnectionClosed as exc:
            self._closed(exc)
            return
        self._barrier()

    def _barrier(self) -> None:
        """Wait until the server has answered everything sent so far, checking it all."""
        ws = self._ws
        if ws is None:
            return
        self._barriers += 1
        try:
            if not self.spec.numbered:
                # No ping in these protocols: a WebSocket ping shows the server is alive,
                # then whatever it sent meanwhile is read and checked.
                pong = ws.ping()
                deadline = time.monotonic() + RECV_TIMEOUT_S
                # Reading meanwhile checks what arrives and notices a close (no pong then).
                while not pong.wait(0.002):
                    self._recv(ws, 0)
                    if time.monotonic() > deadline:
                        raise FuzzFailure(f"no pong within {RECV_TIMEOUT_S} s")
                while self._recv(ws, 0) is not None:
                    pass
                return
            ping_id = f"barrier-{self._barriers}"
            ws.send(json.dumps({"type": "ping", "id": ping_id}))
            while True:
                frame = self._recv(ws, RECV_TIMEOUT_S)
                if frame is not None and frame["type"] == "pong" and frame.get("id") == ping_id:
                    return
        except ConnectionClosed as exc:
            self._closed(exc)

    def _recv(self, ws: ClientConnection, within: float) -> dict[str, Any] | None:
        """The next server frame, checked; None for audio, or when none came `within`."""
        try:
            raw = ws.recv(timeout=within)
        except TimeoutError:
            if within >= RECV_TIMEOUT_S:
                raise FuzzFailure(f"no answer within {within} s") from None
            return None
        spec = self.spec
        if not isinstance(raw, str):
            if not spec.audio_out:
                raise FuzzFailure(f"binary frame from the server: {raw[:40]!r}")
            self.stats.answers["audio"] += 1
            return None
        try:
            frame = json.loads(raw)
        except ValueError:
            raise FuzzFailure(f"server frame is not JSON: {raw[:200]!r}") from None
        if not isinstance(frame, dict) or frame.get(spec.type_key) not in spec.server_types:
            raise FuzzFailure(f"unexpected server frame: {raw[:200]!r}")
        if spec.numbered and not isinstance(frame.get("seq"), int):
            raise FuzzFailure(f"server frame without an integer seq: {raw[:200]!r}")
        kind = frame[spec.type_key]
        if kind == "error":
            code = frame.get("code")
            if code == "internal" or not isinstance(code, str):
                raise FuzzFailure(f"internal error answered: {raw[:300]!r}")
            self.stats.answers[f"error:{code}"] += 1
        else:
            self.stats.answers[str(kind)] += 1
        frame["type"] = kind
        return frame

    def _closed(self, exc: ConnectionClosed) -> None:
        self._ws = None
        if exc.rcvd is None:
            raise FuzzFailure(f"the connection dropped without a close frame: {exc!r}") from exc
        code = exc.rcvd.code
        self.stats.closes[code] += 1
        if code not in ALLOWED_CLOSE_CODES:
            raise FuzzFailure(f"closed with {code} {exc.rcvd.reason!r}") from exc


# running examples against a server, with a well-behaved client beside them

# Banking questions the assistant answers itself, so the bystander is never handed off.
QUESTIONS = ("How do I activate my new card?", "Why was my transfer declined?")


def _drop_broken_lazy_modules() -> None:
    """Hypothesis reads `__file__` of every loaded module. SpeechBrain registers lazy modules
    for optional packages that are not installed (k2), and any attribute of those raises
    ImportError: such placeholders can never be used, so they leave sys.modules."""
    for name, module in list(sys.modules.items()):
        try:
            with warnings.catch_warnings():
                # Deprecated aliases warn when touched; only the ImportError matters here.
                warnings.simplefilter("ignore")
                getattr(module, "__file__", None)
        except ImportError:
            del sys.modules[name]


def run_examples(fuzzer: RouteFuzzer, count: int, *, seed: int | None = None) -> FuzzStats:
    """Run `count` hypothesis examples through `fuzzer` (blocking: call it in a thread).

    Without a `seed` the examples are the same on every run (derandomized), as CI needs.
    """
    _drop_broken_lazy_modules()

    @settings(
        max_examples=count,
        deadline=None,
        database=None,
        derandomize=seed is None,
        suppress_health_check=list(HealthCheck),
    )
    @given(example=examples(fuzzer.spec))
    def check(example: Example) -> None:
        fuzzer.run(example)

    if seed is not None:
        check = hypothesis_seed(seed)(check)
    try:
        check()
    finally:
        fuzzer.close()
    return fuzzer.stats


def chat_fuzzer(srv: RunningServer, secret: str) -> RouteFuzzer:
    """/chat on a server with widget secret `secret`; the opening is a hello with a good token."""
    token = issue_token(secret, f"fuzz-{uuid.uuid4().hex[:8]}", ttl_s=24 * 3600)
    return RouteFuzzer(
        srv.url,
        CHAT,
        opening=(json.dumps({"type": "hello", "token": token}),),
        opened=lambda frame: (
            frame["type"] == "welcome"
            or (frame["type"] == "error" and frame.get("code") == "already_started")
        ),
    )


def operator_fuzzer(srv: RunningServer, key: str) -> RouteFuzzer:
    """/operator; the opening is an auth with `key`."""
    return RouteFuzzer(
        srv.url,
        OPERATOR,
        opening=(json.dumps({"type": "auth", "id": "open", "token": key}),),
        opened=lambda frame: frame.get("ref") == "open",
    )


def twilio_fuzzer(srv: RunningServer, secret: str) -> RouteFuzzer:
    """/voice/twilio; the opening is Twilio's `connected` and a `start` with a good token."""
    token = issue_token(secret, "fuzz-caller", ttl_s=24 * 3600)
    start = {
        "event": "start",
        "sequenceNumber": "1",
        "streamSid": "MZfuzz",
        "start": {
            "accountSid": "ACfuzz",
            "callSid": "CAfuzz",
            "tracks": ["inbound"],
            "customParameters": {"token": token},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        },
    }
    connected = {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    return RouteFuzzer(srv.url, TWILIO, opening=(json.dumps(connected), json.dumps(start)))


def voice_fuzzer(srv: RunningServer, secret: str) -> RouteFuzzer:
    """/voice; the opening is a `start` with a good token."""
    token = issue_token(secret, "fuzz-native", ttl_s=24 * 3600)
    start = {"type": "start", "token": token, "encoding": "pcm16", "sample_rate": 16000}
    return RouteFuzzer(
        srv.url,
        VOICE,
        opening=(json.dumps(start),),
        opened=lambda frame: frame["type"] in ("started", "error"),
    )


async def bystander_chat(srv: RunningServer, token: str, stop: asyncio.Event) -> int:
    """Turn after turn on /chat until `stop`; every turn must be acked and answered."""
    turns = 0
    async with connect_async(srv.url + "/chat") as ws:
        await ws.send(json.dumps({"type": "hello", "token": token}))
        welcome = json.loads(await asyncio.wait_for(ws.recv(), RECV_TIMEOUT_S))
        if welcome["type"] != "welcome":
            raise FuzzFailure(f"bystander refused: {welcome}")
        while not stop.is_set() or turns == 0:
            message_id = f"b{turns}"
            text = QUESTIONS[turns % len(QUESTIONS)]
            await ws.send(json.dumps({"type": "message", "id": message_id, "text": text}))
            kinds: list[str] = []
            while not kinds or kinds[-1] != "reply":
                frame = json.loads(await asyncio.wait_for(ws.recv(), RECV_TIMEOUT_S))
                kinds.append(frame["type"])
                if frame["type"] == "error":
                    raise FuzzFailure(f"bystander got an error: {frame}")
            if kinds[0] != "ack":
                raise FuzzFailure(f"bystander's message was not acked first: {kinds}")
            turns += 1
            await asyncio.sleep(0.2)
    return turns


async def bystander_operator(srv: RunningServer, key: str, stop: asyncio.Event) -> int:
    """An operator listing sessions and searching until `stop`; every call must succeed."""
    calls = 0
    async with operator_client(srv, key) as op:
        while not stop.is_set() or calls == 0:
            await op.ok("sessions.list")
            await op.ok("profiles.search", q="fuzz", limit=5)
            calls += 1
            await asyncio.sleep(0.2)
    return calls


async def fuzz_beside(
    run: Callable[[], FuzzStats], bystander: Callable[[asyncio.Event], Awaitable[int]]
) -> tuple[FuzzStats, int]:
    """Run the blocking fuzzer in a thread while `bystander` is served on this loop."""
    stop = asyncio.Event()
    served = asyncio.ensure_future(bystander(stop))
    try:
        stats = await asyncio.to_thread(run)
    except BaseException:
        served.cancel()
        raise
    finally:
        stop.set()
    return stats, await served
