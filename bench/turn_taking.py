"""Turn taking on /voice: callers who pause mid-sentence, and how soon a finished turn is answered.

The same seeded test set is streamed, in one run, to one server per turn-detection mode
(`ASSISTANT_TURN_DETECTION`: `silence`, an utterance ends after `ASSISTANT_VAD_END_SILENCE_MS`
of silence; `model`, an end-of-turn model decides after a short silence), one server after the
other, and the figures are printed side by side.

**Test set** (`--seed`, default 0; the same clips for every mode):

- complete utterances: a customer-service request said in one breath, ending in a full stop
  (falling pitch);
- paused utterances: a request with ONE pause of 400 to 900 ms (uniform) in the middle, where a
  person hesitates: after a determiner or a preposition ("I'd like to cancel my ... broadband
  contract"), half of them with "um" or "uh" before it. The part before the pause is
  synthesized ending in a comma ("I'd like to cancel my um,"), so that its pitch stays up as
  before more words, not down as at a full stop; then the silence; then the rest, synthesized
  on its own.

The requests come from 30 frames written for this bench (cancellations, bills, deliveries,
faults, accounts), their blanks filled from lists of products and items and some of them
opened with "hello", "hi", "yes", "so" or "right", seeded. Each utterance gets a voice
(espeak-ng en-us, en-gb, en-gb-x-rp, en-gb-scotland, en+m3, en-us+m7, en+f2, en+f3), a speed
(140 to 180 words a minute) and a pitch (35 to 65), seeded.
Each part's 8 kHz audio, without espeak-ng's leading and trailing silence (-40 dB of peak), is
cached under `--cache` (a folder in the system's temporary directory by default), keyed by
the espeak-ng version, voice, speed, pitch and text.

**Calls**: the utterances, shuffled (seeded), are dealt to `--calls` concurrent calls (8);
each call says its share with 3 to 5 s of silence after each utterance (the bot answers in
it), in 8 kHz G.711 mu-law with -60 dBFS line noise under everything, pauses included, sent
on `/voice` (native: `start` with mu-law 8 kHz, then binary 20 ms frames at real-time pace),
as `bench/voice_calls.py` does. Each server runs in this process (a fresh, migrated SQLite
database in a temporary folder; the text models loaded once and shared; the speech models
loaded by each server from its own settings). The servers' voice settings come from this
process's environment (`ASSISTANT_VAD_*`, `ASSISTANT_ASR_*`, `ASSISTANT_TURN_*`, so a
threshold can be tried without editing anything), except `ASSISTANT_TURN_DETECTION`, which the
bench sets.

**What is counted**, per utterance. A `transcript` frame belongs to the utterance whose
audio its `at` (where the server heard the speech stop, in seconds of call audio) falls in,
from the utterance's first voiced sample to the next one's. End of speech is when the bench
sent the frame holding the utterance's last voiced sample (it synthesized the audio, so it
knows where that is).

- false cut-off: a paused utterance whose turn ended inside the pause: a transcript whose
  `at` lies before the pause's end, or more than one transcript for the utterance; the share
  is of the paused utterances that got a transcript (a lost one says nothing either way).
  Complete utterances cut in two are counted apart (split);
- end of speech -> `transcript` (the utterance's last transcript) and -> first reply audio
  (the first binary frame of the first burst of reply audio after the end of speech and the
  transcript, and before the next utterance starts: earlier audio answers an earlier
  utterance), p50 and p99, on the complete utterances, and on the paused ones not cut;
- late ends (model mode): complete utterances whose transcript came at or after the
  maximum silence (`ASSISTANT_TURN_MAX_SILENCE_MS`, less 100 ms of the VAD's timing): the
  model said "not yet" at the end of a finished sentence. The client cannot see the
  decision, only the transcript, so on a machine where the recognizer falls behind this
  counts its delays too;
- lost: utterances without any transcript; errors: `error` frames; calls the server
  closed before their end (dropped); barge-in clears;
- the word error rate of each utterance's transcripts (joined) against what was said
  without the filler.

Targets (issue 21, model mode): false cut-offs <= 5%; end of speech -> transcript p50
<= 350 ms and -> first reply audio p50 <= 450 ms on the complete utterances.

    .venv/bin/python bench/turn_taking.py                  # 120 + 120, 8 calls, both modes
    .venv/bin/python bench/turn_taking.py --quick          # 24 + 24
    .venv/bin/python bench/turn_taking.py --modes silence  # one mode
    ASSISTANT_TURN_THRESHOLD=0.6 .venv/bin/python bench/turn_taking.py --modes model

Writes bench/results/turn_taking.json (or --json PATH), with every utterance's record. Exit
status 0 when every mode's run completed (whatever the figures), 1 when something failed: a
mode that could not run, or a call the server dropped (named under `failed` in the JSON; the
figures of what ran are kept), 2 on bad flags.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
from common import BenchError, cpu_model, load_averages, percentile  # noqa: E402
from voice_calls import (  # noqa: E402
    FRAME_S,
    GAP_S,
    RATE,
    START_S,
    CallLog,
    CallScript,
    FloatArray,
    Utterance,
    line_frames,
    native_stream,
    run_and_write,
    speak,
)
from websockets.exceptions import WebSocketException  # noqa: E402

from assistant import Models, Settings, load_models  # noqa: E402
from assistant.app.settings import Device  # noqa: E402
from assistant.voice.synthesis import EspeakConfig, EspeakTts  # noqa: E402
from fusion.asr import word_error_rate  # noqa: E402
from server import running  # noqa: E402

Kind = Literal["complete", "paused"]
MODES = ("silence", "model")
RESULTS = ROOT / "bench" / "results" / "turn_taking.json"
CACHE = Path(tempfile.gettempdir()) / "cs-assistant-turn-taking"
COMPLETE, PAUSED = 120, 120
QUICK = 24
CALLS = 8
PAUSE_S = (0.4, 0.9)
FILLERS = ("", "", "um", "uh")  # half the pauses come after a filler
VOICES = (
    "en-us",
    "en-gb",
    "en-gb-x-rp",
    "en-gb-scotland",
    "en+m3",
    "en-us+m7",
    "en+f2",
    "en+f3",
)
RATE_WPM = (140, 180)
PITCH = (35, 65)
# The environment variables a server's voice settings are read from (the rest is the bench's).
VOICE_ENV = ("ASSISTANT_VAD_", "ASSISTANT_ASR_", "ASSISTANT_TURN_", "ASSISTANT_TTS")
LATE_MARGIN_S = 0.1
TARGET_CUTOFFS = 0.05
TARGET_TRANSCRIPT_P50_S = 0.35
TARGET_AUDIO_P50_S = 0.45

# Requests as callers make them. "|" is where a person may hesitate: after a determiner or a
# preposition, before the words that carry the request. {product} and {item} are blanks.
FRAMES: tuple[str, ...] = (
    "I'd like to cancel my | {product}",
    "I want to upgrade my | {product} before the end of the month",
    "can you tell me why my | {product} costs more this month",
    "I need to talk to someone about the | charge on my {product} bill",
    "my | {product} has not been working since Monday",
    "I was charged twice for | {item}",
    "I would like a refund for | {item} that I sent back last week",
    "could you send an engineer to | my flat on Friday morning",
    "I'm calling about the delivery of | {item}",
    "I want to change the address on | my account",
    "is it possible to move my appointment to | next Thursday afternoon",
    "the engineer never came for | the installation yesterday",
    "I'd like to add my daughter to | my {product}",
    "how much would it cost to switch to | the unlimited data plan",
    "I cannot log in to | my online account since the update",
    "please stop sending letters to | my old address",
    "I have been waiting two weeks for | a refund on {item}",
    "my monthly payment was taken from | the wrong bank account",
    "can I pay my bill with | a different card this time",
    "I need a copy of | my last three invoices",
    "why was my order for | {item} cancelled without any warning",
    "I want to report a fault on | my landline",
    "the parcel with | {item} was left at the wrong address",
    "could you explain the roaming charges on | my last bill",
    "I want to keep my number when I move to | a new provider",
    "my internet drops out every | evening at around eight",
    "I'd like to pause my | {product} for two months while I'm away",
    "can you reset the password for | my email account",
    "one of your agents promised me a discount on | my {product}",
    "I would like to speak to a manager about | the way my complaint was handled",
)
# How some callers start (none, most often).
LEADS = ("", "", "", "hello", "hi", "yes", "so", "right")
PRODUCTS = (
    "broadband contract",
    "mobile phone contract",
    "TV package",
    "home insurance policy",
    "gym membership",
    "music streaming subscription",
    "electricity plan",
    "family data plan",
)
ITEMS = (
    "the same pair of shoes",
    "a laptop I never received",
    "the blue winter coat",
    "a washing machine",
    "the wireless headphones",
    "a box of printer paper",
    "the garden furniture set",
    "my new phone",
)


# the test set


@dataclass(frozen=True, slots=True)
class Clip:
    """One utterance of the test set: what is said, how, and where the pause is."""

    kind: Kind
    text: str  # what is said, without the filler: the reference for the word error rate
    parts: tuple[str, ...]  # what espeak-ng is given: the sentence, or before and after the pause
    voice: str
    rate_wpm: int
    pitch: int
    pause_s: float  # 0 for a complete utterance


def _sentence(frame: str, rng: np.random.Generator) -> tuple[str, str]:
    filled = frame.format(
        product=PRODUCTS[int(rng.integers(len(PRODUCTS)))],
        item=ITEMS[int(rng.integers(len(ITEMS)))],
    )
    lead = LEADS[int(rng.integers(len(LEADS)))]
    before, after = filled.split(" | ")
    return (f"{lead} {before}" if lead else before), after


def make_clips(seed: int, complete: int, paused: int) -> tuple[Clip, ...]:
    """`complete` utterances, then `paused` ones; a smaller set is a larger one's beginning."""
    clips: list[Clip] = []
    for kind, count, offset in (("complete", complete, 0), ("paused", paused, 1)):
        rng = np.random.default_rng([seed, offset])
        order = rng.permutation(len(FRAMES))
        for i in range(count):
            before, after = _sentence(FRAMES[order[i % len(FRAMES)]], rng)
            voice = VOICES[int(rng.integers(len(VOICES)))]
            rate_wpm = int(rng.integers(RATE_WPM[0], RATE_WPM[1] + 1))
            pitch = int(rng.integers(PITCH[0], PITCH[1] + 1))
            text = f"{before} {after}"
            if kind == "complete":
                clips.append(Clip("complete", text, (f"{text}.",), voice, rate_wpm, pitch, 0.0))
                continue
            filler = FILLERS[int(rng.integers(len(FILLERS)))]
            pause = round(float(rng.uniform(*PAUSE_S)), 3)
            first = f"{before} {filler}," if filler else f"{before},"
            clips.append(Clip("paused", text, (first, f"{after}."), voice, rate_wpm, pitch, pause))
    return tuple(clips)


@dataclass(frozen=True, slots=True)
class Rendered:
    clip: Clip
    audio: FloatArray = field(repr=False)  # 8 kHz, first to last voiced sample
    pause_at_s: float | None  # where the pause starts, from the clip's first sample


def _espeak_version() -> str:
    try:
        done = subprocess.run(
            ["espeak-ng", "--version"], capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise BenchError(f"espeak-ng is needed to synthesize the callers: {exc}") from None
    return done.stdout.strip()


def _cached(path: Path) -> FloatArray | None:
    return np.load(path) if path.is_file() else None


async def render(clips: Sequence[Clip], cache: Path) -> list[Rendered]:
    """Each clip's audio: its parts said by its voice, with the pause's silence between them."""
    version = await asyncio.to_thread(_espeak_version)
    await asyncio.to_thread(cache.mkdir, parents=True, exist_ok=True)
    out: list[Rendered] = []
    for clip in clips:
        tts = EspeakTts(EspeakConfig(voice=clip.voice, rate_wpm=clip.rate_wpm, pitch=clip.pitch))
        parts: list[FloatArray] = []
        for text in clip.parts:
            key = json.dumps([version, clip.voice, clip.rate_wpm, clip.pitch, text])
            path = cache / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.npy"
            wave = await asyncio.to_thread(_cached, path)
            if wave is None:
                wave = await speak(tts, text)
                await asyncio.to_thread(np.save, path, wave)
            parts.append(wave)
        if len(parts) == 1:
            out.append(Rendered(clip, parts[0], None))
            continue
        silence = np.zeros(round(clip.pause_s * RATE), np.float32)
        audio = np.concatenate([parts[0], silence, parts[1]]).astype(np.float32)
        out.append(Rendered(clip, audio, parts[0].shape[0] / RATE))
    return out


# the calls


@dataclass(frozen=True, slots=True)
class TurnCall:
    """One call's audio and, for each of its utterances, its clip and pause (call seconds)."""

    script: CallScript
    clips: tuple[Clip, ...]
    pauses: tuple[tuple[float, float] | None, ...]


def build_calls(rendered: Sequence[Rendered], calls: int, seed: int) -> list[TurnCall]:
    """The clips shuffled and dealt to `calls` calls, each said with 3 to 5 s of silence after."""
    rng = np.random.default_rng([seed, 2])
    order = rng.permutation(len(rendered))
    out: list[TurnCall] = []
    for c in range(calls):
        mine = [rendered[int(i)] for i in order[c::calls]]
        t = float(rng.uniform(*START_S))
        spans: list[tuple[int, Rendered]] = []
        for r in mine:
            start = round(t * RATE)
            spans.append((start, r))
            t = (start + r.audio.shape[0]) / RATE + float(rng.uniform(*GAP_S))
        total = round(t * RATE)
        total += -total % round(FRAME_S * RATE)
        audio = np.zeros(total, np.float32)
        utterances: list[Utterance] = []
        pauses: list[tuple[float, float] | None] = []
        for start, r in spans:
            audio[start : start + r.audio.shape[0]] = r.audio
            utterances.append(
                Utterance(r.clip.text, start / RATE, (start + r.audio.shape[0]) / RATE)
            )
            if r.pause_at_s is None:
                pauses.append(None)
            else:
                pause_start = start / RATE + r.pause_at_s
                pauses.append((pause_start, pause_start + r.clip.pause_s))
        script = CallScript(line_frames(audio, rng), tuple(utterances))
        out.append(TurnCall(script, tuple(r.clip for r in mine), tuple(pauses)))
    return out


@dataclass(frozen=True, slots=True)
class Heard:
    """A `transcript` frame: when it came (perf_counter), its `at` and text."""

    arrived: float
    at_s: float
    text: str
    utterance_id: str


@dataclass(slots=True)
class CallRecord:
    call: TurnCall
    log: CallLog
    transcripts: list[Heard] = field(default_factory=list)
    replies: dict[str, float] = field(default_factory=dict)  # utterance_id -> reply frame came
    errors: list[str] = field(default_factory=list)
    dropped: str | None = None  # why the call ended before its script did

    def on_frame(self, now: float, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "transcript":
            at = frame.get("at")
            if isinstance(at, int | float):
                text, utterance_id = str(frame.get("text", "")), str(frame.get("utterance_id"))
                self.transcripts.append(Heard(now, float(at), text, utterance_id))
            else:
                self.errors.append(f"transcript without a numeric at: {frame!r}"[:200])
        elif kind == "reply":
            self.replies.setdefault(str(frame.get("utterance_id")), now)
        elif kind == "clear":
            self.log.clears += 1
        elif kind == "error":
            self.errors.append(f"{frame.get('code')}: {frame.get('message')}")


# per utterance


@dataclass(frozen=True, slots=True)
class UtteranceOutcome:
    call: int
    index: int  # in its call
    kind: Kind
    text: str
    voice: str
    pause_s: float
    start_s: float  # call audio seconds of its first voiced sample
    end_s: float  # ... and of its last
    pause: tuple[float, float] | None  # call audio seconds
    # Each transcript's text and `at`; seconds from the end of speech and from the pause's
    # start to its arrival, and from the end of speech to its reply frame's.
    transcripts: list[dict[str, Any]]
    cut_off: bool  # the turn ended before the speech did (inside the pause for a paused one)
    eos_to_transcript_s: float | None  # the last transcript's
    eos_to_reply_audio_s: float | None
    eos_to_reply_s: float | None  # the `reply` frame of the last transcript
    late: bool


def _since(t: float | None, reference: float | None) -> float | None:
    return round(t - reference, 3) if t is not None and reference is not None else None


def outcomes(
    number: int, record: CallRecord, late_after_s: float | None
) -> tuple[list[UtteranceOutcome], int]:
    """Each utterance's outcome in this call, and the transcripts that belong to none."""
    call, log = record.call, record.log
    utterances = call.script.utterances
    starts = [u.start_s for u in utterances]
    owned: list[list[Heard]] = [[] for _ in utterances]
    stray = 0
    for transcript in record.transcripts:
        index = bisect.bisect_right(starts, transcript.at_s) - 1
        if index < 0:
            stray += 1
        else:
            owned[index].append(transcript)
    out: list[UtteranceOutcome] = []
    for index, (utterance, clip, pause) in enumerate(
        zip(utterances, call.clips, call.pauses, strict=True)
    ):
        eos = log.eos.get(index)
        pause_wall = log.t0 + pause[0] if pause is not None else None
        heard = sorted(owned[index], key=lambda h: h.at_s)
        cut = len(heard) > 1 or (pause is not None and any(h.at_s < pause[1] for h in heard))
        last = heard[-1] if heard else None
        to_transcript = last.arrived - eos if last is not None and eos is not None else None
        reply = record.replies.get(last.utterance_id) if last is not None else None
        audio = None
        if eos is not None and last is not None:
            # Reply audio that starts before this utterance's transcript answers an earlier one.
            nxt = utterances[index + 1].start_s if index + 1 < len(utterances) else None
            limit = log.t0 + nxt if nxt is not None else float("inf")
            after = [t for t in log.reply_audio_at if max(eos, last.arrived) < t < limit]
            audio = after[0] - eos if after else None
        late = (
            late_after_s is not None
            and clip.kind == "complete"
            and to_transcript is not None
            and to_transcript >= late_after_s
        )
        out.append(
            UtteranceOutcome(
                call=number,
                index=index,
                kind=clip.kind,
                text=clip.text,
                voice=f"{clip.voice} {clip.rate_wpm} wpm pitch {clip.pitch}",
                pause_s=clip.pause_s,
                start_s=utterance.start_s,
                end_s=utterance.end_s,
                pause=pause,
                transcripts=[
                    {
                        "text": h.text,
                        "at": round(h.at_s, 3),
                        "after_eos_s": _since(h.arrived, eos),
                        "after_pause_start_s": _since(h.arrived, pause_wall),
                        "reply_after_eos_s": _since(record.replies.get(h.utterance_id), eos),
                    }
                    for h in heard
                ],
                cut_off=cut,
                eos_to_transcript_s=to_transcript,
                eos_to_reply_audio_s=audio,
                eos_to_reply_s=reply - eos if reply is not None and eos is not None else None,
                late=late,
            )
        )
    return out, stray


# figures


@dataclass(frozen=True, slots=True)
class ModeFigures:
    mode: str
    settings: str
    complete: int
    paused: int
    paused_heard: int  # paused utterances with a transcript: the false cut-offs' denominator
    false_cutoffs: int  # paused utterances whose turn ended inside the pause
    split_complete: int  # complete utterances cut in two or more
    complete_transcript_p50_s: float | None
    complete_transcript_p99_s: float | None
    complete_audio_p50_s: float | None
    complete_audio_p99_s: float | None
    complete_reply_p50_s: float | None
    paused_transcript_p50_s: float | None  # paused utterances not cut
    paused_audio_p50_s: float | None
    late_ends: int | None  # None where there is no maximum silence (silence mode)
    lost_complete: int
    lost_paused: int
    stray_transcripts: int
    errors: list[str]
    calls: int
    calls_dropped: int
    clears: int
    wer: float | None
    load_start: tuple[float, float, float]
    load_end: tuple[float, float, float]

    @property
    def cutoff_share(self) -> float:
        return self.false_cutoffs / self.paused_heard if self.paused_heard else float("nan")


def _p(values: Sequence[float], q: float) -> float | None:
    return percentile(values, q) if values else None


def mode_figures(
    mode: str,
    settings: str,
    results: Sequence[UtteranceOutcome],
    stray: int,
    errors: list[str],
    calls: tuple[int, int],
    clears: int,
    late_after_s: float | None,
    load_start: tuple[float, float, float],
) -> ModeFigures:
    complete = [o for o in results if o.kind == "complete"]
    paused = [o for o in results if o.kind == "paused"]
    kept = [o for o in paused if not o.cut_off]

    def values(group: Sequence[UtteranceOutcome], name: str) -> list[float]:
        return [v for o in group if (v := getattr(o, name)) is not None]

    heard = [o for o in results if o.transcripts]
    late = sum(o.late for o in complete) if late_after_s is not None else None
    return ModeFigures(
        mode=mode,
        settings=settings,
        complete=len(complete),
        paused=len(paused),
        paused_heard=sum(bool(o.transcripts) for o in paused),
        false_cutoffs=sum(o.cut_off for o in paused),
        split_complete=sum(o.cut_off for o in complete),
        complete_transcript_p50_s=_p(values(complete, "eos_to_transcript_s"), 50),
        complete_transcript_p99_s=_p(values(complete, "eos_to_transcript_s"), 99),
        complete_audio_p50_s=_p(values(complete, "eos_to_reply_audio_s"), 50),
        complete_audio_p99_s=_p(values(complete, "eos_to_reply_audio_s"), 99),
        complete_reply_p50_s=_p(values(complete, "eos_to_reply_s"), 50),
        paused_transcript_p50_s=_p(values(kept, "eos_to_transcript_s"), 50),
        paused_audio_p50_s=_p(values(kept, "eos_to_reply_audio_s"), 50),
        late_ends=late,
        lost_complete=sum(not o.transcripts for o in complete),
        lost_paused=sum(not o.transcripts for o in paused),
        stray_transcripts=stray,
        errors=errors[:20],
        calls=calls[0],
        calls_dropped=calls[1],
        clears=clears,
        wer=word_error_rate(
            [o.text for o in heard], [" ".join(t["text"] for t in o.transcripts) for o in heard]
        )
        if heard
        else None,
        load_start=load_start,
        load_end=load_averages(),
    )


def _seconds(v: float | None) -> str:
    return f"{v:.2f} s" if v is not None else "-"


def table(figures: Sequence[ModeFigures]) -> str:
    """The modes side by side, one figure a line, with the model mode's target."""
    rows: list[tuple[str, list[str], str]] = [
        (
            "false cut-offs (paused utterances)",
            [f"{f.false_cutoffs}/{f.paused_heard} {100 * f.cutoff_share:.1f}%" for f in figures],
            f"<= {100 * TARGET_CUTOFFS:.0f}%",
        ),
        (
            "complete: eos -> transcript p50",
            [_seconds(f.complete_transcript_p50_s) for f in figures],
            f"<= {TARGET_TRANSCRIPT_P50_S:.2f} s",
        ),
        (
            "complete: eos -> transcript p99",
            [_seconds(f.complete_transcript_p99_s) for f in figures],
            "",
        ),
        (
            "complete: eos -> first reply audio p50",
            [_seconds(f.complete_audio_p50_s) for f in figures],
            f"<= {TARGET_AUDIO_P50_S:.2f} s",
        ),
        (
            "complete: eos -> first reply audio p99",
            [_seconds(f.complete_audio_p99_s) for f in figures],
            "",
        ),
        (
            "complete: eos -> reply frame p50",
            [_seconds(f.complete_reply_p50_s) for f in figures],
            "",
        ),
        (
            "paused, not cut: eos -> transcript p50",
            [_seconds(f.paused_transcript_p50_s) for f in figures],
            "",
        ),
        (
            "paused, not cut: eos -> reply audio p50",
            [_seconds(f.paused_audio_p50_s) for f in figures],
            "",
        ),
        (
            "late ends (complete, at the max silence)",
            [f"{f.late_ends}/{f.complete}" if f.late_ends is not None else "-" for f in figures],
            "",
        ),
        ("complete utterances split", [f"{f.split_complete}/{f.complete}" for f in figures], ""),
        (
            "lost (complete + paused)",
            [f"{f.lost_complete} + {f.lost_paused}" for f in figures],
            "",
        ),
        ("transcripts of no utterance", [str(f.stray_transcripts) for f in figures], ""),
        ("errors", [str(len(f.errors)) for f in figures], ""),
        ("calls dropped", [f"{f.calls_dropped}/{f.calls}" for f in figures], ""),
        ("barge-in clears", [str(f.clears) for f in figures], ""),
        ("word error rate", [f"{f.wer:.3f}" if f.wer is not None else "-" for f in figures], ""),
        (
            "load average at start, end",
            [f"{f.load_start[0]:.2f}, {f.load_end[0]:.2f}" for f in figures],
            "",
        ),
    ]
    width = max(len(r[0]) for r in rows) + 2
    head = "".join(f"{f.mode:>16}" for f in figures)
    lines = [f"{'':<{width}}{head}{'target (model)':>18}"]
    lines += [
        f"{name:<{width}}{''.join(f'{c:>16}' for c in cells)}{target:>18}"
        for name, cells, target in rows
    ]
    return "\n".join(lines)


# one mode


def _server_settings(mode: str, env: Mapping[str, str], db_url: str, device: Device) -> Settings:
    voice_env = {k: v for k, v in env.items() if k.startswith(VOICE_ENV)}
    settings = Settings.from_env({**voice_env, "ASSISTANT_TURN_DETECTION": mode})
    return replace(settings, host="127.0.0.1", port=0, db_url=db_url, device=device)


def _describe(settings: Settings) -> tuple[str, float | None]:
    """The turn-taking settings in words, and the end-of-speech delay that makes an end late."""
    voice = settings.voice
    if voice.turn_detection == "silence":
        return f"end silence {voice.vad_end_silence_ms} ms", None
    return (
        f"model after {voice.turn_check_ms} ms of silence, threshold {voice.turn_threshold}, "
        f"max silence {voice.turn_max_silence_ms} ms",
        voice.turn_max_silence_ms / 1000 - LATE_MARGIN_S,
    )


async def run_mode(
    mode: str,
    calls: Sequence[TurnCall],
    warm: TurnCall,
    models: Models,
    device: Device,
) -> tuple[ModeFigures, list[UtteranceOutcome]]:
    with tempfile.TemporaryDirectory(prefix="turn-taking-") as tmp:
        db_url = f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
        settings = _server_settings(mode, os.environ, db_url, device)
        described, late_after = _describe(settings)
        async with running(settings, models=models, migrate_db=True) as srv:
            voice = await srv.runtime.voice.load()
            if voice.tts is None:
                print("note: espeak-ng missing: replies are text only", flush=True)
            await _stream(srv.url, [warm])
            load_start = load_averages()
            records = await _stream(srv.url, calls)
    results: list[UtteranceOutcome] = []
    stray = 0
    for number, record in enumerate(records):
        mine, lone = outcomes(number, record, late_after)
        results += mine
        stray += lone
    errors = [e for r in records for e in r.errors]
    errors += [f"call {n} dropped: {r.dropped}" for n, r in enumerate(records) if r.dropped]
    calls_count = (len(records), sum(r.dropped is not None for r in records))
    clears = sum(r.log.clears for r in records)
    figures = mode_figures(
        mode, described, results, stray, errors, calls_count, clears, late_after, load_start
    )
    return figures, results


async def _call(url: str, record: CallRecord, start_at: float) -> None:
    try:
        await native_stream(url, record.log, start_at, record.on_frame)
    except (OSError, WebSocketException, TimeoutError) as exc:
        # A server that cannot keep up may close a call (a keepalive it could not answer):
        # that is a figure of the run, and the other calls go on.
        record.dropped = repr(exc)


async def _stream(url: str, calls: Sequence[TurnCall]) -> list[CallRecord]:
    records = [CallRecord(c, CallLog(c.script)) for c in calls]
    start_at = time.perf_counter() + 0.5
    await asyncio.gather(*(_call(url, r, start_at) for r in records))
    await asyncio.sleep(0.5)
    return records


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} cores; load "
        + " ".join(f"{v:.2f}" for v in load_averages()),
        flush=True,
    )
    clips = make_clips(args.seed, args.complete, args.paused)
    started = time.perf_counter()
    rendered = await render(clips, args.cache)
    calls = build_calls(rendered, args.calls, args.seed)
    longest = max(c.script.duration_s for c in calls)
    pauses = [c.pause_s for c in clips if c.kind == "paused"]
    print(
        f"test set: {args.complete} complete + {args.paused} paused utterances"
        + (f" (pause {min(pauses):.2f} to {max(pauses):.2f} s)" if pauses else "")
        + f", {len({c.voice for c in clips})} voices, seed {args.seed}; synthesized in "
        f"{time.perf_counter() - started:.1f} s (cache {args.cache}); {args.calls} calls of "
        f"up to {longest:.0f} s",
        flush=True,
    )
    warm = build_calls(rendered[:1], 1, args.seed + 1)[0]
    settings = Settings(host="127.0.0.1", port=0, device=args.device)
    models = load_models(settings)
    models.start()
    figures: list[ModeFigures] = []
    records: dict[str, list[dict[str, Any]]] = {}
    failed: dict[str, str] = {}
    try:
        for mode in args.modes:
            # One mode failing (a call dropped on a starved machine) keeps the other's figures.
            try:
                f, results = await run_mode(mode, calls, warm, models, args.device)
            except BenchError as exc:
                print(f"{mode}: failed: {exc}", flush=True)
                failed[mode] = str(exc)
                continue
            print(f"{mode}: {f.settings}", flush=True)
            if f.calls_dropped:
                failed[mode] = f"{f.calls_dropped} of {f.calls} calls dropped"
            figures.append(f)
            records[mode] = [asdict(o) for o in results]
    finally:
        await models.stop()
    if figures:
        print(table(figures), flush=True)
    for f in figures:
        for error in f.errors[:5]:
            print(f"{f.mode}: error: {error}", flush=True)
    return {
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "device": args.device,
        },
        "test_set": {
            "seed": args.seed,
            "complete": args.complete,
            "paused": args.paused,
            "calls": args.calls,
            "voices": sorted({c.voice for c in clips}),
        },
        "modes": [{**asdict(f), "false_cutoff_share": f.cutoff_share} for f in figures],
        "failed": failed,
        "utterances": records,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _modes(text: str) -> tuple[str, ...]:
    modes = tuple(m.strip() for m in text.split(",") if m.strip())
    if not modes or any(m not in MODES for m in modes) or len(set(modes)) < len(modes):
        raise argparse.ArgumentTypeError(f"expected a list of {', '.join(MODES)}: {text!r}")
    return modes


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="turn_taking",
        description="Turn taking on /voice: false cut-offs at mid-sentence pauses and end of "
        "speech -> transcript / reply audio, the turn-detection modes side by side.",
    )
    parser.add_argument("--modes", type=_modes, default=MODES, help="silence,model (both)")
    parser.add_argument("--complete", type=int, help=f"complete utterances ({COMPLETE})")
    parser.add_argument("--paused", type=int, help=f"utterances with a pause ({PAUSED})")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK} + {QUICK} utterances")
    parser.add_argument("--calls", type=int, default=CALLS, help=f"concurrent calls ({CALLS})")
    parser.add_argument("--seed", type=int, default=0, help="the test set's seed (0)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    parser.add_argument("--cache", type=Path, default=CACHE, help=f"synthesized parts ({CACHE})")
    parser.add_argument("--json", type=Path, default=RESULTS, help=f"output ({RESULTS})")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    size = QUICK if args.quick else None
    args.complete = args.complete if args.complete is not None else size or COMPLETE
    args.paused = args.paused if args.paused is not None else size or PAUSED
    if args.complete < 0 or args.paused < 0 or args.complete + args.paused < 1:
        parser.error("--complete and --paused must not be negative, nor both 0")
    if args.calls < 1 or args.calls > args.complete + args.paused:
        parser.error("--calls must be between 1 and the number of utterances")
    result = run_and_write("turn_taking", bench(args), args.json)
    if isinstance(result, int):
        return result
    if result["failed"]:
        print(f"turn_taking: failed: {', '.join(result['failed'])}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
