"""End to end on /voice/twilio and /voice: a real server on port 0, real websockets clients.

Callers speak sentences synthesized with espeak-ng, sent as Twilio Media Streams would send
them (base64 mu-law, 8 kHz, 20 ms) or as native PCM. The peer in these tests plays Twilio's
part: it streams at real-time pace where timing matters, plays the reply audio on a clock
and echoes each mark when the audio before it has played, as Twilio does.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import json
import logging
import shutil
import subprocess
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from assistant import (
    Settings,
    SettingsError,
    issue_token,
)
from assistant.app.runtime import voice_config
from assistant.voice.synthesis import parse_wav
from fusion import SERVICE_EMOTIONS
from fusion.asr import word_error_rate
from fusion.audio import mulaw_decode, mulaw_encode, pcm16_encode, resample
from fusion.vad import VadConfig
from server import RunningServer
from tests.conftest import ServerFactory

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")

FRAME_S = 0.02
TWILIO_FRAME = 160  # bytes of mu-law in 20 ms
SILENCE = b"\xff" * TWILIO_FRAME  # mu-law code of 0
STREAM = "MZ00000000000000000000000000000001"
ACCOUNT = "AC00000000000000000000000000000001"
CALL = "CA00000000000000000000000000000001"
RECV_S = 30.0

# Service requests a bank's callers make; espeak-ng says them, Whisper tiny.en must hear them.
# Measured offline through 8 kHz mu-law: tiny.en gets most of these word for word ("shop" and
# "pending" it sometimes mishears); on a wider set of espeak-ng sentences its WER is about 16%.
CALLER_LINES = [
    "I lost my card and I need a new one.",
    "My card payment was declined at the shop.",
    "I forgot my password and cannot log in.",
    "Why is my payment still pending?",
    "I want to cancel a transfer.",
    "The cash machine kept my card.",
    "Can I get a refund for this payment?",
    "I need to report a stolen card.",
    "I would like to order a new card.",
    "How do I top up my account?",
]


# caller audio


def espeak(text: str) -> tuple[npt.NDArray[np.float32], int]:
    out = subprocess.run(
        ["espeak-ng", "--stdout", "-v", "en-us", "-s", "150"],
        input=text.encode(),
        capture_output=True,
        check=True,
    ).stdout
    audio, rate = parse_wav(out)
    # espeak-ng starts and ends with silence: trim it so that the first frame sent is voiced.
    loud = np.flatnonzero(np.abs(audio) > 0.02)
    return audio[loud[0] : loud[-1] + 1], rate


def caller_mulaw(text: str) -> bytes:
    """What Twilio would send for the caller saying `text`: 8 kHz G.711 mu-law."""
    audio, rate = espeak(text)
    return mulaw_encode(resample(audio, rate, 8000)).tobytes()


@pytest.fixture(scope="module")
def caller_audio() -> dict[str, bytes]:
    return {text: caller_mulaw(text) for text in CALLER_LINES}


# servers


@pytest.fixture
async def server(voice_server: ServerFactory) -> AsyncIterator[RunningServer]:
    async with voice_server() as srv:
        yield srv


# the Twilio side


@dataclass
class Received:
    media: list[tuple[float, bytes]] = field(default_factory=list)  # (arrival, mu-law)
    marks: list[tuple[float, str]] = field(default_factory=list)
    echoed: list[tuple[float, str]] = field(default_factory=list)
    clears: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Closed:
    code: int | None
    reason: str | None


class TwilioPeer:
    """Plays Twilio: sends Media Streams messages and plays what the server sends back."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.got = Received()
        self._sequence = 0
        self._chunk = 0
        self._sent_audio_s = 0.0
        self._play_until = 0.0
        self._pending: list[tuple[float, str]] = []  # marks waiting for their audio to play
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())
        self._player = asyncio.create_task(self._play())

    async def send(self, message: dict[str, Any]) -> None:
        # A server that stops reading would block the send for ever: fail instead.
        await asyncio.wait_for(self.ws.send(json.dumps(message)), RECV_S)

    def _next(self) -> str:
        self._sequence += 1
        return str(self._sequence)

    async def begin(
        self, params: dict[str, str], media_format: dict[str, Any] | None = None
    ) -> None:
        await self.send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        fmt = media_format or {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
        start = {
            "accountSid": ACCOUNT,
            "streamSid": STREAM,
            "callSid": CALL,
            "tracks": ["inbound"],
            "customParameters": params,
            "mediaFormat": fmt,
        }
        await self.send(
            {"event": "start", "sequenceNumber": self._next(), "start": start, "streamSid": STREAM}
        )

    def media_message(self, payload: bytes | str) -> dict[str, Any]:
        self._chunk += 1
        encoded = payload if isinstance(payload, str) else base64.b64encode(payload).decode()
        return {
            "event": "media",
            "sequenceNumber": self._next(),
            "media": {
                "track": "inbound",
                "chunk": str(self._chunk),
                "timestamp": str(int(self._sent_audio_s * 1000)),
                "payload": encoded,
            },
            "streamSid": STREAM,
        }

    async def stream(
        self,
        audio: bytes,
        *,
        pace: bool = True,
        frame_bytes: int = TWILIO_FRAME,
        on_first: Callable[[], None] | None = None,
    ) -> None:
        """Send `audio` in frames, at real-time pace unless `pace` is False."""
        started = time.monotonic()
        offset = 0.0
        for begin in range(0, len(audio), frame_bytes):
            frame = audio[begin : begin + frame_bytes]
            if pace:
                delay = started + offset - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await self.send(self.media_message(frame))
            if begin == 0 and on_first is not None:
                on_first()
            offset += len(frame) / 8000
            self._sent_audio_s += len(frame) / 8000

    async def align(self, samples: int = 1280) -> None:
        """Silence up to a whole number of `samples` (160 ms) of call audio. An utterance
        sent next meets the VAD's 32 ms windows at the same phase however long the server
        took to answer the one before, so the recognizer hears the same audio every run."""
        pad = -round(self._sent_audio_s * 8000) % samples
        if pad:
            await self.stream(SILENCE[:1] * pad)

    async def silence_until(self, done: Callable[[], bool], within: float) -> None:
        """Keep streaming silence at real-time pace, as a quiet caller's line does."""
        deadline = time.monotonic() + within
        started, sent = time.monotonic(), 0
        while not done():
            assert time.monotonic() < deadline, "timed out waiting on the server"
            delay = started + sent * FRAME_S - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await self.send(self.media_message(SILENCE))
            sent += 1
            self._sent_audio_s += FRAME_S

    async def silence_until_media(self, after: int, within: float) -> None:
        """Silence until the server has sent more than `after` media messages."""
        await self.silence_until(lambda: len(self.got.media) > after, within)

    async def silence_for(self, seconds: float) -> None:
        until = time.monotonic() + seconds
        await self.silence_until(lambda: time.monotonic() >= until, seconds + 5)

    async def dtmf(self, digit: str) -> None:
        await self.send(
            {
                "event": "dtmf",
                "streamSid": STREAM,
                "sequenceNumber": self._next(),
                "dtmf": {"track": "inbound_track", "digit": digit},
            }
        )

    async def stop(self) -> None:
        await self.send(
            {
                "event": "stop",
                "sequenceNumber": self._next(),
                "streamSid": STREAM,
                "stop": {"accountSid": ACCOUNT, "callSid": CALL},
            }
        )

    async def closed(self, within: float = RECV_S) -> Closed:
        """Wait for the server to close the socket; its close code and reason."""
        await asyncio.wait_for(asyncio.shield(self._reader), within)
        return Closed(self.ws.close_code, self.ws.close_reason)

    async def aclose(self) -> None:
        self._player.cancel()
        await self.ws.close()
        await asyncio.gather(self._reader, self._player, return_exceptions=True)

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                now = time.monotonic()
                message = json.loads(raw)
                assert message["streamSid"] == STREAM, message
                if message["event"] == "media":
                    payload = base64.b64decode(message["media"]["payload"], validate=True)
                    self.got.media.append((now, payload))
                    self._play_until = max(self._play_until, now) + len(payload) / 8000
                elif message["event"] == "mark":
                    name = message["mark"]["name"]
                    self.got.marks.append((now, name))
                    self._pending.append((self._play_until, name))
                elif message["event"] == "clear":
                    self.got.clears.append(now)
                    # Twilio drops what it buffered and answers the pending marks at once.
                    self._play_until = now
                    self._pending = [(now, name) for _, name in self._pending]
                else:
                    raise AssertionError(f"unexpected message from the server: {message}")
                self._changed.set()
        except ConnectionClosed:
            pass  # an abnormal close: the test reads the close code
        finally:
            self._changed.set()

    async def _play(self) -> None:
        while True:
            if not self._pending:
                self._changed.clear()
                await self._changed.wait()
                continue
            due, name = self._pending[0]
            wait = due - time.monotonic()
            if wait > 0:
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), wait)
                continue
            self._pending.pop(0)
            await self.send(
                {
                    "event": "mark",
                    "sequenceNumber": self._next(),
                    "streamSid": STREAM,
                    "mark": {"name": name},
                }
            )
            self.got.echoed.append((time.monotonic(), name))


@asynccontextmanager
async def twilio_call(srv: RunningServer) -> AsyncIterator[TwilioPeer]:
    ws = await connect(srv.url + "/voice/twilio", max_size=None)
    peer = TwilioPeer(ws)
    try:
        yield peer
    finally:
        await peer.aclose()


async def user_turns(srv: RunningServer, external_id: str) -> list[Any]:
    user = await srv.runtime.store.upsert_user("default", external_id)
    return [t for t in await srv.runtime.store.list_user_turns(user.id) if t.role == "user"]


def loudness(payloads: list[bytes]) -> float:
    audio = mulaw_decode(np.frombuffer(b"".join(payloads), dtype=np.uint8))
    return float(np.sqrt(np.mean(audio.astype(np.float64) ** 2))) if audio.size else 0.0


# the Must-show tests


async def test_twilio_call_transcribes_answers_and_tracks_marks(
    server: RunningServer, caller_audio: dict[str, bytes]
) -> None:
    """Ten utterances at real-time pace: transcripts within 15% WER, labelled turns, reply
    audio as Twilio media, and the last reply's mark echoed and tracked by the server."""
    async with twilio_call(server) as peer:
        await peer.begin({"external_id": "caller-wer", "name": "Robin"})
        await peer.silence_until(lambda: bool(server.runtime.voice.calls), within=10)
        call = next(iter(server.runtime.voice.calls.values()))
        for index, line in enumerate(CALLER_LINES):
            await peer.align()
            await peer.stream(caller_audio[line])
            # Silence while the caller waits; the reply's first audio ends the wait.
            await peer.silence_until_media(after=len(peer.got.media), within=20)
            if index < len(CALLER_LINES) - 1:
                # Let a little of the reply play, then speak over it (a barge-in).
                await peer.silence_for(0.3)
        # The last reply plays out; its mark comes once its audio has been sent. Meanwhile the
        # synthesized audio waiting to be paced out stays within its bound.
        last_mark = f"reply-u{len(CALLER_LINES)}"
        buffered: list[int] = []

        def mark_sent() -> bool:
            buffered.append(call.speaker.buffered_frames)
            return any(n == last_mark for _, n in peer.got.marks)

        await peer.silence_until(mark_sent, 60)
        assert 0 < max(buffered) * FRAME_S <= call.speaker.config.max_buffered_s
        assert last_mark in call.speaker.pending_marks
        await peer.silence_until(lambda: any(n == last_mark for _, n in peer.got.echoed), 10)
        await peer.silence_until(lambda: last_mark not in call.speaker.pending_marks, 5)
        assert not call.speaker.playing
        await peer.stop()
        closed = await peer.closed()
    assert closed.code == 1000

    turns = await user_turns(server, "caller-wer")
    hypotheses = [t.text for t in turns]
    wer = word_error_rate(CALLER_LINES, hypotheses)
    assert len(turns) == len(CALLER_LINES), hypotheses
    assert wer <= 0.15, (wer, hypotheses)
    for turn in turns:
        assert turn.intent is not None and turn.intent_confidence is not None, turn
        assert turn.emotion in SERVICE_EMOTIONS and turn.emotion_scores, turn
    # Every reply message carried whole 20 ms frames of audible mu-law.
    assert all(len(p) == TWILIO_FRAME for _, p in peer.got.media)
    assert loudness([p for _, p in peer.got.media]) > 0.02
    assert call.stats.barge_ins == len(CALLER_LINES) - 1
    conversation = await server.runtime.store.get_conversation(call.id)
    assert conversation is not None
    assert conversation.channel == "voice" and conversation.status == "closed"
    assert call.id not in server.runtime.chat.sessions


async def test_barge_in_clears_within_300_ms(
    server: RunningServer, caller_audio: dict[str, bytes]
) -> None:
    async with twilio_call(server) as peer:
        await peer.begin({"external_id": "caller-barge"})
        await peer.stream(caller_audio[CALLER_LINES[0]])
        await peer.silence_until_media(after=0, within=20)
        await peer.silence_for(0.4)
        assert not peer.got.clears
        onset: list[float] = []
        await peer.stream(
            caller_audio[CALLER_LINES[1]], on_first=lambda: onset.append(time.monotonic())
        )
        assert peer.got.clears, "no clear while the caller spoke over the reply"
        delay = peer.got.clears[0] - onset[0]
        assert 0.0 < delay <= 0.3, delay
        # Nothing of the cut reply follows the clear (the next reply needs the caller to end).
        cleared = peer.got.clears[0]
        assert not [t for t, _ in peer.got.media if cleared < t < cleared + 1.0]
        await peer.stop()
        await peer.closed()


# bad audio


async def test_twilio_start_in_another_media_format_closes_1003(server: RunningServer) -> None:
    async with twilio_call(server) as peer:
        await peer.begin(
            {"external_id": "caller-alaw"},
            {"encoding": "audio/x-alaw", "sampleRate": 8000, "channels": 1},
        )
        closed = await peer.closed()
    assert closed.code == 1003
    assert "audio/x-alaw" in (closed.reason or "")
    assert not server.runtime.voice.calls


async def test_native_opus_is_refused_and_the_connection_stays_open(
    server: RunningServer,
) -> None:
    async with connect(server.url + "/voice") as ws:
        await ws.send(json.dumps({"type": "start", "encoding": "opus", "sample_rate": 16000}))
        error = json.loads(await asyncio.wait_for(ws.recv(), RECV_S))
        assert error["type"] == "error" and error["code"] == "unsupported_audio"
        assert "opus" in error["message"]
        await ws.send(json.dumps({"type": "start", "encoding": "pcm16", "sample_rate": 16000}))
        started = json.loads(await asyncio.wait_for(ws.recv(), RECV_S))
        assert started["type"] == "started" and started["speaks"] is True


async def test_twilio_payloads_of_7_bytes_are_heard(
    server: RunningServer, caller_audio: dict[str, bytes]
) -> None:
    line = CALLER_LINES[2]
    async with twilio_call(server) as peer:
        await peer.begin({"external_id": "caller-7-bytes"})
        await peer.stream(caller_audio[line], pace=False, frame_bytes=7)
        await peer.stream(SILENCE * 50, pace=False)
        await peer.stop()
        closed = await peer.closed()
    assert closed.code == 1000
    turns = await user_turns(server, "caller-7-bytes")
    assert len(turns) == 1 and word_error_rate([line], [turns[0].text]) <= 0.2, turns


async def test_native_pcm16_in_odd_sized_frames_is_transcribed(
    server: RunningServer,
) -> None:
    line = CALLER_LINES[4]
    audio, rate = espeak(line)
    # Two seconds of silence after the speech: more than the longest wait for the end of a
    # turn (1.3 s, when the end-of-turn model says "not yet").
    pcm = pcm16_encode(resample(audio, rate, 16000)) + pcm16_encode(np.zeros(32000))
    async with connect(server.url + "/voice") as ws:
        await ws.send(
            json.dumps(
                {
                    "type": "start",
                    "user": {"external_id": "caller-odd-pcm"},
                    "encoding": "pcm16",
                    "sample_rate": 16000,
                }
            )
        )
        started = json.loads(await asyncio.wait_for(ws.recv(), RECV_S))
        assert started["type"] == "started"
        for begin in range(0, len(pcm), 333):  # odd: samples straddle frames
            await ws.send(pcm[begin : begin + 333])
        frames: list[dict[str, Any]] = []
        audio_bytes = 0
        # The reply's text comes whole; its audio follows at real-time pace: take half a second.
        while not any(f["type"] == "reply" for f in frames) or audio_bytes < 16000:
            message = await asyncio.wait_for(ws.recv(), RECV_S)
            if isinstance(message, bytes):
                audio_bytes += len(message)
            else:
                frames.append(json.loads(message))
        await ws.send(json.dumps({"type": "stop"}))
        while True:
            try:
                message = await asyncio.wait_for(ws.recv(), RECV_S)
            except ConnectionClosed:
                break
            if isinstance(message, bytes):
                audio_bytes += len(message)
        assert ws.close_code == 1000
    transcript = next(f for f in frames if f["type"] == "transcript")
    reply = next(f for f in frames if f["type"] == "reply")
    assert transcript["utterance_id"] == reply["utterance_id"] == "u1"
    assert word_error_rate([line], [transcript["text"]]) <= 0.2, transcript
    assert reply["text"] and reply["intent"]["label"] and reply["emotion"]["label"]
    # Reply audio in the client's format: 16-bit PCM at 16 kHz, whole 20 ms frames.
    assert audio_bytes > 0 and audio_bytes % 640 == 0


async def test_twilio_invalid_base64_is_ignored_with_one_log_line(
    server: RunningServer, caller_audio: dict[str, bytes], caplog: pytest.LogCaptureFixture
) -> None:
    line = CALLER_LINES[6]
    audio = caller_audio[line]
    half = len(audio) // 2 // TWILIO_FRAME * TWILIO_FRAME
    with caplog.at_level(logging.DEBUG, logger="assistant.voice.twilio"):
        async with twilio_call(server) as peer:
            await peer.begin({"external_id": "caller-base64"})
            await peer.stream(audio[:half], pace=False)
            for _ in range(3):
                await peer.send(peer.media_message("@@not base64@@"))
            await peer.stream(audio[half:] + SILENCE * 50, pace=False)
            await peer.stop()
            closed = await peer.closed()
    assert closed.code == 1000
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "invalid_audio" in warnings[0].getMessage() and warnings[0].exc_info is None
    assert any("3 bad messages" in r.getMessage() for r in caplog.records)
    turns = await user_turns(server, "caller-base64")
    assert len(turns) == 1 and word_error_rate([line], [turns[0].text]) <= 0.2, turns


async def test_twilio_media_before_start_closes_1008(server: RunningServer) -> None:
    async with twilio_call(server) as peer:
        await peer.send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        await peer.send(peer.media_message(SILENCE))
        closed = await peer.closed()
    assert closed.code == 1008
    assert "before 'start'" in (closed.reason or "")


async def test_native_audio_before_start_is_an_error_once(server: RunningServer) -> None:
    async with connect(server.url + "/voice") as ws:
        for _ in range(5):
            await ws.send(b"\x00\x00" * 160)
        await ws.send(json.dumps({"type": "dtmf", "digit": "1"}))
        first = json.loads(await asyncio.wait_for(ws.recv(), RECV_S))
        second = json.loads(await asyncio.wait_for(ws.recv(), RECV_S))
        assert first == {
            "type": "error",
            "code": "start_required",
            "message": "send 'start' before audio",
        }
        assert second["code"] == "start_required"


async def test_call_of_silence_only_stores_no_turns_and_closes_cleanly(
    server: RunningServer,
) -> None:
    async with twilio_call(server) as peer:
        await peer.begin({"external_id": "caller-silent"})
        await peer.dtmf("7")
        await peer.stream(SILENCE * 250, pace=False)  # 5 s
        await peer.stop()
        closed = await peer.closed()
    assert closed.code == 1000
    assert await user_turns(server, "caller-silent") == []
    user = await server.runtime.store.upsert_user("default", "caller-silent")
    events = await server.runtime.store.list_events(user.id)
    assert [(e.name, e.props) for e in events] == [("dtmf", {"digit": "7"})]
    assert not server.runtime.voice.calls and not server.runtime.chat.sessions


def ten_minutes(caller_audio: dict[str, bytes]) -> Iterator[bytes]:
    """Ten minutes of a caller's line: low noise, with an utterance every 30 seconds."""
    rng = np.random.default_rng(7)
    second = 8000
    noise = mulaw_encode(rng.normal(0.0, 0.002, 30 * second)).tobytes()
    for index in range(20):
        yield caller_audio[CALLER_LINES[index % len(CALLER_LINES)]]
        yield noise


async def test_ten_minute_call_keeps_memory_bounded(
    server: RunningServer, caller_audio: dict[str, bytes]
) -> None:
    """Ten minutes of audio as fast as the server takes it: buffers and memory stay flat."""
    largest_vad = 0

    async def watch(call: Any) -> None:
        nonlocal largest_vad
        while call.id in server.runtime.voice.calls:
            largest_vad = max(largest_vad, call.vad.buffered_samples)
            await asyncio.sleep(0.005)

    async def caught_up(call: Any, sent_s: float) -> int:
        """Memory in use once the server has heard everything sent so far."""
        for _ in range(3000):
            if call.stats.heard_s >= sent_s - 0.01:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the server did not catch up within a minute")
        gc.collect()
        return tracemalloc.get_traced_memory()[0]

    tracemalloc.start()
    try:
        async with twilio_call(server) as peer:
            await peer.begin({"external_id": "caller-long"})
            await peer.silence_until(lambda: bool(server.runtime.voice.calls), within=10)
            call = next(iter(server.runtime.voice.calls.values()))
            watcher = asyncio.create_task(watch(call))
            sent_s = call.stats.heard_s
            memory: list[tuple[float, int]] = []
            for index, piece in enumerate(ten_minutes(caller_audio)):
                for begin in range(0, len(piece), 8 * TWILIO_FRAME):
                    await peer.stream(piece[begin : begin + 8 * TWILIO_FRAME], pace=False)
                sent_s += len(piece) / 8000
                if index % 2:  # after each half minute of background noise
                    memory.append((sent_s, await caught_up(call, sent_s)))
            await peer.stop()
            closed = await peer.closed(within=120)
            await watcher
    finally:
        tracemalloc.stop()
    assert closed.code == 1000
    assert call.stats.heard_s >= 600.0
    assert 0 < largest_vad <= call.vad.max_buffered_samples
    # From minute two on, memory does not grow with the call: keeping the call's audio would
    # add about 4 MB a minute (16 kHz float32), 2 MB at 8 kHz.
    later = [used for at, used in memory if at >= 120.0]
    assert max(later) - later[0] < 4 * 2**20, memory
    turns = await user_turns(server, "caller-long")
    assert len(turns) == 20, [t.text for t in turns]


async def test_token_decides_who_calls_when_the_server_has_a_secret(
    voice_server: ServerFactory,
) -> None:
    async with voice_server(widget_secret="s3cret") as srv:
        async with twilio_call(srv) as peer:
            await peer.begin({"external_id": "caller-no-token"})
            closed = await peer.closed()
        assert closed.code == 1008 and "token" in (closed.reason or "")
        token = issue_token("s3cret", "cust-signed", tenant="acme")
        async with twilio_call(srv) as peer:
            await peer.begin({"token": token, "external_id": "someone-else"})
            await peer.silence_until(lambda: bool(srv.runtime.voice.calls), within=10)
            call = next(iter(srv.runtime.voice.calls.values()))
            assert (call.session.user.tenant, call.session.user.external_id) == (
                "acme",
                "cust-signed",
            )
            await peer.stop()
            assert (await peer.closed()).code == 1000


async def test_drain_ends_calls_with_1012(server: RunningServer) -> None:
    async with twilio_call(server) as peer:
        await peer.begin({"external_id": "caller-drained"})
        await peer.silence_until(lambda: bool(server.runtime.voice.calls), within=10)
        call_id = next(iter(server.runtime.voice.calls))
        await server.runtime.voice.drain()
        closed = await peer.closed()
    assert closed.code == 1012
    conversation = await server.runtime.store.get_conversation(call_id)
    assert conversation is not None and conversation.status == "closed"
    async with twilio_call(server) as peer:
        await peer.begin({"external_id": "caller-late"})
        assert (await peer.closed()).code == 1012


def test_voice_settings_make_a_valid_configuration() -> None:
    default = voice_config(Settings.from_env({}))
    assert default.models.tts == "espeak" and default.models.vad == VadConfig()
    tuned = voice_config(
        Settings.from_env(
            {
                "ASSISTANT_TTS": "none",
                "ASSISTANT_ASR_BEAM": "3",
                "ASSISTANT_ASR_WORKERS": "1",
                "ASSISTANT_VAD_END_SILENCE_MS": "120",
                "ASSISTANT_VAD_MAX_UTTERANCE_S": "8",
                "ASSISTANT_TURN_DETECTION": "silence",
            }
        )
    )
    models = tuned.models
    assert models.tts == "none" and (models.asr.beam_size, models.asr.workers) == (3, 1)
    # So short a silence leaves no room for the early pause, and caps the padding.
    assert (models.vad.end_silence_ms, models.vad.pause_ms, models.vad.speech_pad_ms) == (
        120,
        None,
        120,
    )
    assert models.vad.max_utterance_s == 8.0
    with pytest.raises(SettingsError):
        Settings.from_env({"ASSISTANT_TTS": "festival"})


async def test_a_caller_waiting_for_a_person_is_told_so_in_speech(
    server: RunningServer,
) -> None:
    async with connect(server.url + "/voice") as ws:
        start = {"type": "start", "user": {"external_id": "caller-waiting"}}
        await ws.send(json.dumps({**start, "encoding": "pcm16", "sample_rate": 16000}))
        assert json.loads(await asyncio.wait_for(ws.recv(), RECV_S))["type"] == "started"

        async def say(line: str) -> tuple[dict[str, Any], int]:
            """The reply to `line`, and how much of its audio came after it (half a second
            is enough: speech is paced in real time)."""
            audio, rate = espeak(line)
            # Silence longer than the longest wait for the end of a turn (1.3 s).
            pcm = pcm16_encode(resample(audio, rate, 16000)) + pcm16_encode(np.zeros(32000))
            for begin in range(0, len(pcm), 640):  # 20 ms frames
                await ws.send(pcm[begin : begin + 640])
            reply: dict[str, Any] | None = None
            spoken = 0
            while reply is None or spoken < 16000:
                message = await asyncio.wait_for(ws.recv(), RECV_S)
                if isinstance(message, bytes):
                    spoken += len(message) if reply is not None else 0
                elif json.loads(message)["type"] == "reply":
                    reply = json.loads(message)
            return reply, spoken

        handoff, spoken = await say("I want to talk to a real person.")
        assert handoff["handoff"] is True and handoff["waiting"] == "nobody_online"
        assert "call back later" in handoff["text"] and "writ" not in handoff["text"]
        assert spoken > 0
        waiting, spoken = await say("Is anyone there?")
        assert waiting["handoff"] is True and waiting["waiting"] == "nobody_online"
        assert waiting["text"] and waiting["text"] not in handoff["text"]
        assert spoken > 0, "the caller hears where they stand"
        await ws.send(json.dumps({"type": "stop"}))
