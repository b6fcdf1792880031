"""Concurrent voice calls at real-time pace: end of speech -> transcript, -> first reply audio.

Each simulated call is a caller saying bank-service sentences (synthesized once with
espeak-ng, 8 kHz G.711 mu-law, faint line noise throughout) separated by 3-5 s of silence,
streamed in 20 ms frames at real-time pace; call i has the same script whatever the number of
calls (seeded), and the calls start at random offsets within the first seconds.

**End of speech** is the moment the bench sent the frame holding an utterance's last voiced
sample (it synthesized the audio, so it knows where that is). Two modes:

- `server` (default): a real server in this process (a fresh, migrated SQLite database in a
  temporary directory; the speech models built from the server's own settings, as
  `assistant serve` builds them) and real websockets clients.
  On `/voice` (native, `start` with mu-law 8 kHz, then binary 20 ms frames) the bench times
  end of speech -> the `transcript` frame, and -> the first binary reply audio frame.
  On `/voice/twilio` (Twilio Media Streams: `connected`, `start` with customParameters and
  mediaFormat, base64 `media`, `stop`; marks are echoed when their audio would have played)
  Twilio has no transcript message, so only end of speech -> first reply `media` is timed.
- `components`: no server; the same audio through what a call runs per frame (mu-law decode,
  `StreamResampler`, `VadStream`, `TurnTranscriber`) on one event loop with one shared
  `SpeechRecognizer`: the speech path's own capacity, and its word error rate.

Per call it reports the ASR real-time factor: the recognizer's compute for the call over the
call's length (the share of one core a call costs in ASR; in server mode the recognizer's
total divided evenly between the calls) and, overall, compute over transcribed audio.
It prints p50/p99 end of speech -> transcript, p50 end of speech -> first reply audio, for
each number of calls, and the largest number whose p99 end of speech -> transcript is
<= 1 s, with every smaller number's too and 95% of the utterances transcribed (the target:
8 or more on a 2-core CPU), with the machine and its load average. A p99 over one run of
40 s calls rests on a few dozen utterances: one stall on a shared machine moves it.

    .venv/bin/python bench/voice_calls.py                    # 1,2,4,8,10,12 calls, both routes
    .venv/bin/python bench/voice_calls.py --quick            # 1 and 4 calls, 16 s each
    .venv/bin/python bench/voice_calls.py --mode components --calls 8,12,16
    .venv/bin/python bench/voice_calls.py --calls 8 --seconds 60 --route voice

Writes bench/results/voice_calls.json (or --json PATH). Exit status 0 when every run
completed (whatever the figures), 1 when something failed, 2 on bad flags.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import platform
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402
from common import BenchError, cpu_model, load_average, percentile  # noqa: E402
from websockets.asyncio.client import ClientConnection, connect  # noqa: E402
from websockets.exceptions import ConnectionClosed, WebSocketException  # noqa: E402

from assistant import Settings, load_models  # noqa: E402
from assistant.app.runtime import voice_config  # noqa: E402
from assistant.voice.models import VoiceModels  # noqa: E402
from assistant.voice.synthesis import EspeakConfig, EspeakTts  # noqa: E402
from fusion.asr import SpeechRecognizer, TurnTranscriber, word_error_rate  # noqa: E402
from fusion.audio import StreamResampler, mulaw_decode, mulaw_encode, resample  # noqa: E402
from fusion.vad import SAMPLE_RATE, SpeechEnded, VadConfig, VadModel  # noqa: E402
from server import running  # noqa: E402

Mode = Literal["server", "components"]
Route = Literal["voice", "twilio", "components"]
FloatArray = npt.NDArray[np.float32]

FRAME_S = 0.02
FRAME_BYTES = 160  # 20 ms of 8 kHz mu-law
RATE = 8000
LINE_NOISE = 0.001  # RMS of the line noise under everything: -60 dBFS, a quiet line
GAP_S = (3.0, 5.0)  # silence after each utterance (the bot answers in it)
START_S = (0.3, 3.0)  # when a call's first utterance starts
TARGET_P99_S = 1.0
TARGET_CALLS = 8
SWEEP = (1, 2, 4, 8, 10, 12)
QUICK_SWEEP = (1, 4)
DEFAULT_SECONDS = 40.0
QUICK_SECONDS = 16.0
RESULTS = ROOT / "bench" / "results" / "voice_calls.json"
# The espeak-ng voice Whisper tiny.en hears best through the telephone band.
CALLER_VOICE = EspeakConfig(voice="en+m7", rate_wpm=150)
MATCH_S = 0.6  # a transcript's `at` within this of an utterance's end is that utterance's

# What callers of a bank say (American spelling, as Whisper writes it).
SENTENCES: tuple[str, ...] = (
    "I lost my card yesterday",
    "my transfer has not arrived",
    "I want to close my account",
    "why was my card payment declined",
    "can I change my pin number",
    "there is a charge I do not recognize",
    "how long does a bank transfer take",
    "I need a new card because mine is broken",
    "my salary has not arrived yet",
    "please cancel the direct debit",
    "I was charged twice for the same purchase",
    "how do I top up my account",
    "the cash machine kept my card",
    "what is the exchange rate today",
    "I forgot my password",
    "can you send me a refund",
    "my card expires next month",
    "where can I use my card",
    "the app says my payment is pending",
    "I lost my card yesterday and I need to block it straight away",
    "my transfer to my sister has not arrived after three days",
    "why was my card payment declined at the supermarket this morning",
    "I would like to change the pin number on my debit card",
    "there is a payment on my statement that I do not recognize",
    "how long does it take for a bank transfer to reach another country",
    "my salary has not arrived in my account yet this month",
    "please cancel the direct debit for my old phone contract",
    "I was charged twice for the same purchase at the gas station",
    "the cash machine kept my card and did not give me any money",
    "can you tell me the exchange rate for euros today",
    "I forgot the password for the mobile banking app",
    "I would like a refund for the item that I returned last week",
    "my new card has still not arrived in the mail",
    "I think someone has stolen my card details",
    "hello I am calling about a problem with my account",
    "I moved house and need to update my address",
    "how much does it cost to send money abroad",
    "my card was blocked after I typed the wrong pin three times",
    "I want to order a virtual card for online shopping",
    "the money I sent went to the wrong account",
    "can I get my money back if the shop does not deliver",
    "why is there a fee on my cash withdrawal",
    "my account says I have no money but I was paid today",
    "I need to verify my identity but the app keeps failing",
    "how do I add my card to my phone",
    "I am traveling to Spain next week will my card work there",
    "my top up failed but the money left my bank",
    "I would like to increase my spending limit",
    "the contactless payment did not work in the shop",
    "can you explain this charge from last Tuesday",
    "my partner needs a card on my account",
    "I do not understand why my balance is so low",
    "please send me a copy of my statement",
    "I received a message asking for my password is that you",
    "the refund from the airline has not reached my account",
    "how do I change my phone number",
    "I want to report a fraudulent transaction",
    "is there a limit on how much I can top up",
    "my card payment keeps failing at checkout",
    "how do I activate my new card",
)


# caller audio


@dataclass(frozen=True, slots=True)
class Utterance:
    text: str
    start_s: float  # call-audio time of its first voiced sample
    end_s: float  # ... and of its last: the end of speech


@dataclass(frozen=True, slots=True)
class CallScript:
    frames: tuple[bytes, ...]  # 160-byte mu-law frames, 20 ms each
    utterances: tuple[Utterance, ...]

    @property
    def duration_s(self) -> float:
        return len(self.frames) * FRAME_S


def _voiced(wave: FloatArray, rate: int) -> FloatArray:
    """espeak-ng's rendering without its leading and trailing silence (-40 dB of peak)."""
    frame = rate // 100
    n = wave.shape[0] // frame
    rms = np.sqrt(np.mean(wave[: n * frame].reshape(n, frame).astype(np.float64) ** 2, axis=1))
    loud = np.flatnonzero(20 * np.log10(rms + 1e-9) > 20 * np.log10(rms.max() + 1e-9) - 40)
    return wave[loud[0] * frame : (loud[-1] + 1) * frame]


async def speak(tts: EspeakTts, text: str) -> FloatArray:
    """`text` said by `tts` at 8 kHz, voiced part only, as the caller's handset sends it."""
    result = await tts.synthesize(text)
    if result is None:
        raise BenchError(f"espeak-ng said nothing for {text!r}")
    return resample(_voiced(result.audio, result.sample_rate), result.sample_rate, RATE)


async def synthesize(texts: Sequence[str]) -> dict[str, FloatArray]:
    """Each sentence in the caller's voice."""
    tts = EspeakTts(CALLER_VOICE)
    return {text: await speak(tts, text) for text in texts}


def line_frames(audio: FloatArray, rng: np.random.Generator) -> tuple[bytes, ...]:
    """`audio` (8 kHz) with the line noise under it, as 20 ms frames of mu-law."""
    noisy = audio + (LINE_NOISE * rng.standard_normal(len(audio))).astype(np.float32)
    codes = mulaw_encode(noisy).tobytes()
    return tuple(codes[i : i + FRAME_BYTES] for i in range(0, len(codes), FRAME_BYTES))


def build_script(library: dict[str, FloatArray], seconds: float, seed: int) -> CallScript:
    rng = np.random.default_rng(seed)
    texts = list(library)
    order = [texts[i] for i in rng.permutation(len(texts))]
    total = int(seconds * RATE)
    audio = np.zeros(total, np.float32)
    utterances: list[Utterance] = []
    t = float(rng.uniform(*START_S))
    for text in order * 4:
        wave = library[text]
        start = int(t * RATE)
        if start + wave.shape[0] + int(GAP_S[0] * RATE) > total:
            break
        audio[start : start + wave.shape[0]] = wave
        utterances.append(Utterance(text, start / RATE, (start + wave.shape[0]) / RATE))
        t = (start + wave.shape[0]) / RATE + float(rng.uniform(*GAP_S))
    return CallScript(line_frames(audio, rng), tuple(utterances))


# one call's timings


@dataclass(slots=True)
class CallLog:
    script: CallScript
    t0: float = 0.0  # perf_counter when frame 0 was due
    eos: dict[int, float] = field(default_factory=dict)  # utterance -> wall time sent
    transcript_at: dict[int, float] = field(default_factory=dict)  # utterance -> received
    transcript_text: dict[int, str] = field(default_factory=dict)
    reply_audio_at: list[float] = field(default_factory=list)  # first frame of each burst
    compute_s: float = 0.0  # ASR compute for this call (components mode)
    speculated: int = 0  # speculative transcriptions started (components mode)
    reused: int = 0  # ... that became the turn's transcript
    clears: int = 0
    last_audio: float = 0.0

    def match(self, at_s: float | None, fallback: int) -> int | None:
        """The utterance a transcript with end time `at_s` (call audio seconds) belongs to."""
        if at_s is None:
            return fallback if fallback < len(self.script.utterances) else None
        ends = np.array([u.end_s for u in self.script.utterances])
        if ends.size == 0:
            return None
        best = int(np.argmin(np.abs(ends - at_s)))
        return best if abs(ends[best] - at_s) <= MATCH_S else None

    def audio_frame(self, now: float) -> None:
        # A reply's audio arrives as a burst of frames; a gap of over half a second starts
        # a new burst (the next reply).
        if now - self.last_audio > 0.5:
            self.reply_audio_at.append(now)
        self.last_audio = now


async def pace(
    log: CallLog, send: Callable[[int, bytes], Awaitable[None]], start_at: float
) -> None:
    """Send the call's frames at real-time pace from `start_at` (perf_counter)."""
    utterances = log.script.utterances
    last_frame = {int(u.end_s * RATE - 1) // FRAME_BYTES: i for i, u in enumerate(utterances)}
    log.t0 = start_at
    for i, frame in enumerate(log.script.frames):
        delay = start_at + i * FRAME_S - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await send(i, frame)
        if i in last_frame:
            log.eos[last_frame[i]] = time.perf_counter()


# the server's clients


async def recv_json(ws: ClientConnection) -> dict[str, Any] | bytes:
    raw = await asyncio.wait_for(ws.recv(), 60.0)
    if isinstance(raw, bytes):
        return raw
    frame = json.loads(raw)
    if not isinstance(frame, dict):
        raise BenchError(f"not a JSON object: {raw[:200]!r}")
    return frame


async def native_stream(
    url: str, log: CallLog, start_at: float, on_frame: Callable[[float, dict[str, Any]], None]
) -> None:
    """Stream `log`'s script on /voice: JSON start (mu-law 8 kHz), binary frames at real-time
    pace, `stop`. Each JSON frame the server sends goes to `on_frame` with the time it came,
    each binary reply audio frame to `log.audio_frame`."""
    async with connect(f"{url}/voice", max_size=None) as ws:
        await ws.send(
            json.dumps(
                {
                    "type": "start",
                    "user": {"external_id": f"bench-{uuid.uuid4().hex[:12]}"},
                    "encoding": "mulaw",
                    "sample_rate": RATE,
                }
            )
        )
        first = await recv_json(ws)
        if not isinstance(first, dict) or first.get("type") != "started":
            raise BenchError(f"/voice answered {first!r} to start")

        async def receive() -> None:
            async for raw in ws:
                now = time.perf_counter()
                if isinstance(raw, bytes):
                    log.audio_frame(now)
                else:
                    on_frame(now, json.loads(raw))

        receiver = asyncio.create_task(receive())

        async def send(_: int, frame: bytes) -> None:
            await ws.send(frame)

        try:
            await pace(log, send, start_at)
            await asyncio.sleep(2.0)  # the last reply
            await ws.send(json.dumps({"type": "stop"}))
            await asyncio.wait_for(receiver, 30.0)
        finally:
            receiver.cancel()


async def native_call(url: str, log: CallLog, start_at: float, errors: list[str]) -> None:
    """One call on /voice: transcripts matched to utterances, reply audio, clears, errors."""
    seen = 0

    def on_frame(now: float, frame: dict[str, Any]) -> None:
        nonlocal seen
        kind = frame.get("type")
        if kind == "transcript":
            index = log.match(frame.get("at"), seen)
            seen += 1
            if index is not None and index not in log.transcript_at:
                log.transcript_at[index] = now
                log.transcript_text[index] = str(frame.get("text", ""))
        elif kind == "clear":
            log.clears += 1
        elif kind == "error":
            errors.append(f"{frame.get('code')}: {frame.get('message')}")

    await native_stream(url, log, start_at, on_frame)


async def twilio_call(url: str, log: CallLog, start_at: float, errors: list[str]) -> None:
    """One Twilio Media Stream on /voice/twilio; marks echoed once their audio has played."""
    sid = "MZ" + uuid.uuid4().hex
    call_sid = "CA" + uuid.uuid4().hex
    account = "AC" + uuid.uuid4().hex
    async with connect(f"{url}/voice/twilio", max_size=None) as ws:
        seq = 0

        def message(event: str, **body: Any) -> str:
            nonlocal seq
            seq += 1
            return json.dumps(
                {"event": event, "sequenceNumber": str(seq), **body, "streamSid": sid}
            )

        await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await ws.send(
            message(
                "start",
                start={
                    "accountSid": account,
                    "streamSid": sid,
                    "callSid": call_sid,
                    "tracks": ["inbound"],
                    "customParameters": {"external_id": f"bench-{uuid.uuid4().hex[:12]}"},
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": RATE, "channels": 1},
                },
            )
        )
        playback_end = 0.0  # when the audio received so far will have played
        marks: list[tuple[float, str]] = []

        async def receive() -> None:
            nonlocal playback_end
            async for raw in ws:
                now = time.perf_counter()
                frame = json.loads(raw)
                event = frame.get("event")
                if event == "media":
                    log.audio_frame(now)
                    playback_end = max(playback_end, now) + FRAME_S
                elif event == "mark":
                    marks.append((playback_end, str(frame.get("mark", {}).get("name", ""))))
                elif event == "clear":
                    log.clears += 1
                    playback_end = now
                    # Twilio answers a clear with the marks it had not played yet.
                    for _, name in marks:
                        await ws.send(message("mark", mark={"name": name}))
                    marks.clear()

        receiver = asyncio.create_task(receive())

        async def send(i: int, frame: bytes) -> None:
            now = time.perf_counter()
            while marks and marks[0][0] <= now:
                _, name = marks.pop(0)
                await ws.send(message("mark", mark={"name": name}))
            media = {
                "track": "inbound",
                "chunk": str(i + 1),
                "timestamp": str(int(i * FRAME_S * 1000)),
                "payload": base64.b64encode(frame).decode("ascii"),
            }
            await ws.send(message("media", media=media))

        try:
            await pace(log, send, start_at)
            await asyncio.sleep(2.0)
            await ws.send(message("stop", stop={"accountSid": account, "callSid": call_sid}))
            await asyncio.wait_for(receiver, 30.0)
        finally:
            receiver.cancel()


# components mode


async def component_call(
    vad: VadModel, config: VadConfig, recognizer: SpeechRecognizer, log: CallLog, start_at: float
) -> None:
    stream = vad.stream(config)
    resampler = StreamResampler(RATE, SAMPLE_RATE)
    turns = TurnTranscriber(recognizer)
    pending: list[asyncio.Task[None]] = []

    async def transcribe(ended: SpeechEnded) -> None:
        transcript = await turns.finish(ended)
        now = time.perf_counter()
        log.compute_s += transcript.compute_s
        index = log.match(ended.at_s, len(log.transcript_at))
        if index is not None and index not in log.transcript_at:
            log.transcript_at[index] = now
            log.transcript_text[index] = transcript.text

    async def send(_: int, frame: bytes) -> None:
        samples = resampler.process(mulaw_decode(np.frombuffer(frame, dtype=np.uint8)))
        for event in stream.feed(samples):
            turns.observe(event)
            if isinstance(event, SpeechEnded):
                pending.append(asyncio.create_task(transcribe(event)))

    await pace(log, send, start_at)
    for event in stream.feed(resampler.flush()) + stream.flush():
        turns.observe(event)
        if isinstance(event, SpeechEnded):
            pending.append(asyncio.create_task(transcribe(event)))
    await asyncio.gather(*pending)
    log.speculated, log.reused = turns.speculated, turns.reused
    await turns.aclose()


# figures


@dataclass(frozen=True, slots=True)
class RunFigures:
    mode: str
    route: str
    calls: int
    seconds: float
    utterances: int
    transcribed: int  # utterances whose transcript arrived (voice route, components)
    eos_to_transcript_p50_s: float | None
    eos_to_transcript_p99_s: float | None
    eos_to_transcript_max_s: float | None
    eos_to_reply_audio_p50_s: float | None
    eos_to_reply_audio_p99_s: float | None
    replies_with_audio: int
    rtf_per_call_mean: float  # ASR compute per second of call
    rtf_per_call_max: float
    asr_rtf: float  # ASR compute per second of audio transcribed
    wer: float | None
    speculated: int | None  # speculative transcriptions started (components mode)
    speculative_reused: int | None  # ... whose result was the turn's transcript
    barge_in_clears: int
    asr_max_queued: int
    errors: list[str]
    load_start: float
    load_end: float

    @property
    def meets_target(self) -> bool:
        p99 = self.eos_to_transcript_p99_s
        return (
            p99 is not None and p99 <= TARGET_P99_S and self.transcribed >= 0.95 * self.utterances
        )


def figures(
    mode: str,
    route: str,
    logs: Sequence[CallLog],
    asr_before: Any,
    asr_after: Any,
    errors: list[str],
    load_start: float,
) -> RunFigures:
    transcript_lat: list[float] = []
    reply_lat: list[float] = []
    refs: list[str] = []
    hyps: list[str] = []
    utterances = 0
    for log in logs:
        script = log.script
        utterances += len(log.eos)
        for index, eos in sorted(log.eos.items()):
            if index in log.transcript_at:
                transcript_lat.append(log.transcript_at[index] - eos)
                refs.append(script.utterances[index].text)
                hyps.append(log.transcript_text[index])
            # The first reply audio after this end of speech and before the next utterance.
            nxt = (
                script.utterances[index + 1].start_s if index + 1 < len(script.utterances) else None
            )
            limit = log.t0 + nxt if nxt is not None else float("inf")
            after = [t for t in log.reply_audio_at if eos < t < limit]
            if after:
                reply_lat.append(after[0] - eos)
    compute = asr_after.compute_s - asr_before.compute_s
    audio = asr_after.audio_s - asr_before.audio_s
    seconds = max(log.script.duration_s for log in logs)
    if mode == "components":
        per_call = [log.compute_s / log.script.duration_s for log in logs]
    else:  # the recognizer is shared and anonymous: its total, shared evenly
        per_call = [compute / len(logs) / seconds] * len(logs)
    return RunFigures(
        mode=mode,
        route=route,
        calls=len(logs),
        seconds=seconds,
        utterances=utterances,
        transcribed=len(transcript_lat),
        eos_to_transcript_p50_s=percentile(transcript_lat, 50) if transcript_lat else None,
        eos_to_transcript_p99_s=percentile(transcript_lat, 99) if transcript_lat else None,
        eos_to_transcript_max_s=max(transcript_lat) if transcript_lat else None,
        eos_to_reply_audio_p50_s=percentile(reply_lat, 50) if reply_lat else None,
        eos_to_reply_audio_p99_s=percentile(reply_lat, 99) if reply_lat else None,
        replies_with_audio=len(reply_lat),
        rtf_per_call_mean=float(np.mean(per_call)),
        rtf_per_call_max=float(np.max(per_call)),
        asr_rtf=compute / audio if audio > 0 else 0.0,
        wer=word_error_rate(refs, hyps) if refs else None,
        speculated=sum(log.speculated for log in logs) if mode == "components" else None,
        speculative_reused=sum(log.reused for log in logs) if mode == "components" else None,
        barge_in_clears=sum(log.clears for log in logs),
        asr_max_queued=int(asr_after.max_queued),
        errors=errors[:20],
        load_start=load_start,
        load_end=load_average(),
    )


# runs


def scripts_for(library: dict[str, FloatArray], calls: int, seconds: float) -> list[CallScript]:
    return [build_script(library, seconds, seed=1000 + i) for i in range(calls)]


async def run_server(
    url: str,
    route: Route,
    recognizer: SpeechRecognizer,
    scripts: Sequence[CallScript],
) -> RunFigures:
    logs = [CallLog(s) for s in scripts]
    errors: list[str] = []
    before = recognizer.stats()
    load_start = load_average()
    start_at = time.perf_counter() + 0.5
    call = native_call if route == "voice" else twilio_call
    try:
        await asyncio.gather(*(call(url, log, start_at, errors) for log in logs))
    except (OSError, WebSocketException, ConnectionClosed, TimeoutError) as exc:
        raise BenchError(f"a call on /{route} failed: {exc!r}") from exc
    await asyncio.sleep(0.5)
    return figures("server", route, logs, before, recognizer.stats(), errors, load_start)


async def run_components(
    vad: VadModel, config: VadConfig, recognizer: SpeechRecognizer, scripts: Sequence[CallScript]
) -> RunFigures:
    logs = [CallLog(s) for s in scripts]
    before = recognizer.stats()
    load_start = load_average()
    start_at = time.perf_counter() + 0.5
    await asyncio.gather(*(component_call(vad, config, recognizer, log, start_at) for log in logs))
    after = recognizer.stats()
    return figures("components", "components", logs, before, after, [], load_start)


def row(f: RunFigures) -> str:
    def s(v: float | None) -> str:
        return f"{v:6.2f}" if v is not None else "     -"

    wer = f"{f.wer:5.3f}" if f.wer is not None else "    -"
    return (
        f"{f.mode:<10} {f.route:<10} {f.calls:>5} {f.utterances:>5} {f.transcribed:>5}  "
        f"{s(f.eos_to_transcript_p50_s)} {s(f.eos_to_transcript_p99_s)}  "
        f"{s(f.eos_to_reply_audio_p50_s)}  {f.rtf_per_call_mean:6.3f} {f.asr_rtf:6.3f}  "
        f"{wer}  {f.asr_max_queued:>4}  {f.load_start:5.2f}"
    )


HEADER = (
    "mode       route      calls  utts  txed  eos->transcript  eos->audio  RTF/call "
    "ASR RTF    WER  maxq   load\n"
    "                                          p50 s  p99 s      p50 s"
)


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    sweep: tuple[int, ...] = args.calls
    seconds: float = args.seconds
    modes: list[Mode] = ["server", "components"] if args.mode == "both" else [args.mode]
    routes: list[Route] = ["voice", "twilio"] if args.route == "both" else [args.route]
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; load {load_average():.2f}", flush=True)
    library = await synthesize(SENTENCES)
    results: list[RunFigures] = []
    settings = Settings(host="127.0.0.1", port=0, device=args.device)
    vconfig = voice_config(settings).models
    if args.asr_beam is not None:
        vconfig = replace(vconfig, asr=replace(vconfig.asr, beam_size=args.asr_beam))
    if args.asr_workers is not None:
        vconfig = replace(vconfig, asr=replace(vconfig.asr, workers=args.asr_workers))
    if args.encoder_pad is not None:
        pad = None if args.encoder_pad == "full" else float(args.encoder_pad)
        vconfig = replace(vconfig, asr=replace(vconfig.asr, encoder_pad_s=pad))
    if args.no_speculation:
        vconfig = replace(vconfig, speculate=False, vad=replace(vconfig.vad, pause_ms=None))
    config_line = (
        f"asr: beam {vconfig.asr.beam_size}, workers {vconfig.asr.workers}, "
        f"encoder pad {vconfig.asr.encoder_pad_s} s; vad: end silence "
        f"{vconfig.vad.end_silence_ms} ms, pause {vconfig.vad.pause_ms} ms; "
        f"speculation {'on' if vconfig.speculate else 'off'}"
    )
    print(config_line, flush=True)
    print(HEADER, flush=True)

    if "components" in modes:
        vad = VadModel()
        recognizer = SpeechRecognizer(vconfig.asr)
        recognizer.start()
        try:
            vad_cfg = vconfig.vad if vconfig.speculate else replace(vconfig.vad, pause_ms=None)
            await run_components(vad, vad_cfg, recognizer, scripts_for(library, 1, 8.0))
            for n in sweep:
                f = await run_components(vad, vad_cfg, recognizer, scripts_for(library, n, seconds))
                results.append(f)
                print(row(f), flush=True)
        finally:
            await recognizer.stop()

    if "server" in modes:
        with tempfile.TemporaryDirectory(prefix="voice-calls-") as tmp:
            settings = replace(settings, db_url=f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}")
            models = load_models(settings)
            models.start()
            voice = await asyncio.to_thread(VoiceModels.load, vconfig)
            try:
                async with running(settings, models=models, voice=voice, migrate_db=True) as srv:
                    await srv.runtime.voice.load()
                    if voice.tts is None:
                        print("note: espeak-ng missing: replies are text only", flush=True)
                    warm = scripts_for(library, 1, 8.0)
                    await run_server(srv.url, "voice", voice.recognizer, warm)
                    for route in routes:
                        for n in sweep:
                            scripts = scripts_for(library, n, seconds)
                            f = await run_server(srv.url, route, voice.recognizer, scripts)
                            results.append(f)
                            print(row(f), flush=True)
            finally:
                await voice.stop()
                await models.stop()

    def largest(mode: str) -> int | None:
        """The most calls such that this run and every run with fewer calls met the target."""
        runs = sorted(
            (f for f in results if f.mode == mode and f.route != "twilio"), key=lambda f: f.calls
        )
        best = None
        for f in runs:
            if not f.meets_target:
                break
            best = f.calls
        return best

    summary = {mode: largest(mode) for mode in modes}
    for mode, best in summary.items():
        verdict = "none" if best is None else str(best)
        print(
            f"largest number of calls with p99 end of speech -> transcript <= "
            f"{TARGET_P99_S:.0f} s, fewer calls too ({mode}): {verdict} "
            f"(target >= {TARGET_CALLS})",
            flush=True,
        )
    return {
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
        },
        "config": config_line,
        "seconds_per_call": seconds,
        "runs": [asdict(f) for f in results],
        "largest_calls_p99_within_1s": summary,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _calls(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("numbers of calls must be >= 1")
    return values


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="voice_calls",
        description="N concurrent voice calls at real-time pace: end of speech -> transcript "
        "and -> first reply audio.",
    )
    parser.add_argument("--calls", type=_calls, help="numbers of calls, e.g. 1,2,4,8,10,12")
    parser.add_argument("--seconds", type=float, help=f"call length ({DEFAULT_SECONDS:.0f} s)")
    parser.add_argument("--quick", action="store_true", help="1 and 4 calls of 16 s")
    parser.add_argument("--mode", choices=("server", "components", "both"), default="server")
    parser.add_argument("--route", choices=("voice", "twilio", "both"), default="both")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    parser.add_argument("--asr-beam", type=int, help="override the server's ASR beam size")
    parser.add_argument("--asr-workers", type=int, help="override the ASR worker count")
    parser.add_argument(
        "--encoder-pad",
        help="seconds of padding after each utterance in Whisper's encoder window, or 'full' "
        "for the 30 s window (default: the recognizer's)",
    )
    parser.add_argument(
        "--no-speculation", action="store_true", help="transcribe only once a turn has ended"
    )
    parser.add_argument("--json", type=Path, default=RESULTS, help=f"output ({RESULTS})")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.calls is None:
        args.calls = QUICK_SWEEP if args.quick else SWEEP
    if args.seconds is None:
        args.seconds = QUICK_SECONDS if args.quick else DEFAULT_SECONDS
    if args.seconds < 8:
        parser.error("--seconds must be at least 8")
    ran = run_and_write("voice_calls", bench(args), args.json)
    return ran if isinstance(ran, int) else 0


def run_and_write(
    name: str, run: Coroutine[Any, Any, dict[str, Any]], path: Path
) -> dict[str, Any] | int:
    """Run a voice bench with only warnings logged and write its result to `path` as JSON;
    the result, or the exit status when it could not finish (the reason printed)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # The server raises some of its loggers to INFO (connections opened and closed): the
    # handler, not the loggers, decides what the bench prints.
    for handler in logging.getLogger().handlers:
        handler.setLevel(logging.WARNING)
    try:
        result = asyncio.run(run)
    except BenchError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"written to {path}")
    return result


if __name__ == "__main__":
    sys.exit(main())
