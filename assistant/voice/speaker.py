"""A call's voice: reply text in, synthesized audio out as paced 20 ms frames, with barge-in.

Replies arrive a sentence at a time; each sentence is synthesized as soon as it arrives, so
the first audio leaves while later sentences are still being written or synthesized. Frames
go out at real-time pace, `lead_s` ahead of the listener's playback: enough to ride out
jitter, little enough that a barge-in has little audio to take back. After each reply a mark
follows its last frame; Twilio echoes a mark once the audio before it has played.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from assistant.voice.synthesis import Synthesis, TextToSpeech, TtsError

log = logging.getLogger(__name__)

FRAME_S = 0.02
# How long stopping waits for a synthesis (a subprocess being killed) to wind down.
STOP_TIMEOUT_S = 5.0


class AudioSink(Protocol):
    """Where a speaker's output goes: the call's route (Twilio or native)."""

    def frames(self, audio: npt.NDArray[np.float32], sample_rate: int) -> list[bytes]:
        """Synthesized audio as 20 ms frames in the route's encoding."""
        ...

    def send_frame(self, frame: bytes) -> None: ...

    def send_mark(self, name: str) -> None: ...

    def send_clear(self, key: str | None) -> None: ...


@dataclass(frozen=True, slots=True)
class SpeakerConfig:
    # Audio sent ahead of the listener's playback clock.
    lead_s: float = 0.2
    # Synthesized audio held ahead of the pacer; synthesis of further sentences waits.
    max_buffered_s: float = 6.0
    # Sentences waiting for synthesis; beyond this the reply is cut (logged).
    max_pending: int = 64
    # Marks sent and not yet echoed that the speaker remembers.
    max_marks: int = 32
    # An unechoed mark stops counting as playing this long after its audio should have ended.
    mark_grace_s: float = 2.0


@dataclass(frozen=True, slots=True)
class _Say:
    key: str
    text: str


@dataclass(frozen=True, slots=True)
class _Mark:
    key: str
    name: str


@dataclass(frozen=True, slots=True)
class _Frame:
    key: str
    data: bytes


class Speaker:
    """Owns a synthesis task and a pacing task; `interrupt` stops both at once (barge-in)."""

    def __init__(
        self,
        tts: TextToSpeech | None,
        sink: AudioSink,
        config: SpeakerConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._tts = tts
        self._sink = sink
        self.config = config or SpeakerConfig()
        self._clock = clock
        self._texts: deque[_Say | _Mark] = deque()
        self._text_ready = asyncio.Event()
        self._frames: deque[_Frame | _Mark] = deque()
        self._frame_ready = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._buffered = 0  # frames in self._frames
        # When the listener will have played everything sent so far.
        self._play_until = 0.0
        self._synthesizing: str | None = None
        # Mark name -> (reply key, when its audio should have finished playing).
        self._marks: OrderedDict[str, tuple[str, float]] = OrderedDict()
        # Replies cut off by a barge-in: their late sentences are not spoken.
        self._silenced: deque[str] = deque(maxlen=16)
        self._closed = False
        self._synth: asyncio.Task[None] | None = None
        self._pacer: asyncio.Task[None] | None = None
        # Synthesis tasks cancelled by a barge-in that are still winding down.
        self._retired: set[asyncio.Task[None]] = set()

    @property
    def speaks(self) -> bool:
        return self._tts is not None

    @property
    def playing(self) -> bool:
        """Bot audio is (or is about to be) heard: queued, being synthesized, paced out and
        not yet played by the clock, or sent before a mark the listener has not echoed."""
        now = self._clock()
        grace = self.config.mark_grace_s
        return bool(
            self._texts
            or self._frames
            or self._synthesizing is not None
            or now < self._play_until
            or any(now < until + grace for _, until in self._marks.values())
        )

    @property
    def buffered_frames(self) -> int:
        """Synthesized 20 ms frames waiting to be paced out."""
        return self._buffered

    @property
    def pending_marks(self) -> tuple[str, ...]:
        """Marks sent whose echo has not come back yet, oldest first."""
        return tuple(self._marks)

    @property
    def current(self) -> str | None:
        """The key of the reply being heard now, if any."""
        for item in self._frames:
            return item.key
        if self._synthesizing is not None:
            return self._synthesizing
        for pending in self._texts:
            return pending.key
        for key, _ in reversed(self._marks.values()):
            return key
        return None

    def start(self) -> None:
        if self._tts is None:
            return
        self._synth = asyncio.create_task(self._synthesize_loop(), name="speaker-synthesis")
        self._pacer = asyncio.create_task(self._pace_loop(), name="speaker-pacing")

    async def stop(self) -> None:
        self._closed = True
        self._texts.clear()
        self._frames.clear()
        tasks = [t for t in (self._synth, self._pacer, *self._retired) if t is not None]
        self._synth = self._pacer = None
        for task in tasks:
            task.cancel()
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=STOP_TIMEOUT_S)
            if stuck:
                log.warning("speaker: %d tasks did not stop in time", len(stuck))

    def say(self, key: str, text: str) -> None:
        """Speak `text` as part of the reply `key` (after everything queued before it)."""
        if self._tts is None or self._closed or key in self._silenced or not text.strip():
            return
        if len(self._texts) >= self.config.max_pending:
            log.warning("speaker: too many sentences waiting; reply %s cut short", key)
            return
        self._texts.append(_Say(key, text))
        self._text_ready.set()

    def end(self, key: str, mark: str | None) -> None:
        """The reply `key` is complete: a mark named `mark` (if any) follows its audio."""
        if mark is None or self._tts is None or self._closed or key in self._silenced:
            return
        self._texts.append(_Mark(key, mark))
        self._text_ready.set()

    def played(self, name: str) -> bool:
        """The listener echoed the mark `name`: the audio before it has been played."""
        return self._marks.pop(name, None) is not None

    def interrupt(self) -> str | None:
        """Barge-in: drop every reply queued or playing and tell the listener to clear its
        buffer. Returns the key of the reply cut off, or None if nothing was playing."""
        if self._closed or not self.playing:
            return None
        cut = self.current
        keys = {i.key for i in self._texts} | {i.key for i in self._frames}
        if self._synthesizing is not None:
            keys.add(self._synthesizing)
        self._silenced.extend(sorted(keys))
        self._texts.clear()
        self._frames.clear()
        self._buffered = 0
        self._room.set()
        self._marks.clear()
        self._play_until = 0.0
        self._sink.send_clear(cut)
        # Cancelling synthesis stops the synthesizer mid-sentence; a fresh task takes the next
        # reply at once while the old one winds down (its subprocess killed), without waiting.
        if self._synth is not None:
            self._synth.cancel()
            self._retired.add(self._synth)
            self._synth.add_done_callback(self._retired.discard)
            self._synthesizing = None
            self._synth = asyncio.create_task(self._synthesize_loop(), name="speaker-synthesis")
        return cut

    async def _synthesize_loop(self) -> None:
        assert self._tts is not None
        while True:
            while not self._texts:
                self._text_ready.clear()
                await self._text_ready.wait()
            item = self._texts.popleft()
            if isinstance(item, _Mark):
                self._push(item)
                continue
            self._synthesizing = item.key
            audio = await self._speak(item.text)
            self._synthesizing = None
            if audio is None or item.key in self._silenced:
                continue
            for frame in self._sink.frames(audio.audio, audio.sample_rate):
                while self._buffered * FRAME_S >= self.config.max_buffered_s:
                    self._room.clear()
                    await self._room.wait()
                if item.key in self._silenced:
                    break
                self._push(_Frame(item.key, frame))

    async def _speak(self, text: str) -> Synthesis | None:
        assert self._tts is not None
        try:
            return await self._tts.synthesize(text)
        except TtsError as exc:
            log.warning("speech synthesis failed, a sentence goes unspoken: %s", exc)
            return None

    def _push(self, item: _Frame | _Mark) -> None:
        self._frames.append(item)
        if isinstance(item, _Frame):
            self._buffered += 1
        self._frame_ready.set()

    async def _pace_loop(self) -> None:
        lead = self.config.lead_s
        while True:
            while not self._frames:
                self._frame_ready.clear()
                await self._frame_ready.wait()
            head = self._frames[0]
            if isinstance(head, _Mark):
                self._frames.popleft()
                self._remember_mark(head)
                self._sink.send_mark(head.name)
                continue
            now = self._clock()
            # From silence, playback starts now; otherwise this frame follows the last one.
            start = max(self._play_until, now)
            wait = start - lead - now
            if wait > 0:
                await asyncio.sleep(wait)
                continue  # a barge-in may have emptied the queue meanwhile
            self._frames.popleft()
            self._buffered -= 1
            if self._buffered * FRAME_S < self.config.max_buffered_s:
                self._room.set()
            self._play_until = start + FRAME_S
            self._sink.send_frame(head.data)

    def _remember_mark(self, mark: _Mark) -> None:
        self._marks[mark.name] = (mark.key, self._play_until)
        while len(self._marks) > self.config.max_marks:
            self._marks.popitem(last=False)
