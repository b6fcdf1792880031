"""One live call, whatever its route: caller audio in, turns through the chat session, speech out.

    audio -> 16 kHz (StreamResampler) -> VAD -> utterance -> ASR + speech features
          -> user turn -> the session's turn worker (the same path as /chat) -> reply -> Speaker

The call opens a ChatSession with channel "voice" and enqueues PendingTurns, so voice turns
are stored, labelled, fused into the profile and answered exactly like chat turns; the
session's frames come back through `ChatSession.listener` instead of a socket.

Caller audio is processed as it arrives, on the event loop (the VAD costs about 0.1 ms per
32 ms window), so a speech onset is seen at once and a barge-in is never queued behind
anything. Transcription starts at the caller's first pause (`TurnTranscriber`) and runs in
the recognizer's pool; the turns wait for it in order.

In the model mode of turn taking (assistant/voice/turns.py) each pause is also put to the
end-of-turn model, in its batcher, while the speculative transcript is being made; when both
say the caller has finished and the caller is still silent in that pause, the VAD ends the
utterance at once (`VadStream.end_turn`). A pause the model cannot judge ends by the silence
rule. A pause that speech interrupts is forgotten, whatever its answer.

Everything a call holds is bounded: the VAD's utterance buffer (cut at the maximum utterance
length), at most `max_utterances` finished utterances waiting for the recognizer (beyond that
`hear` waits, which pushes back on the socket), synthesized audio waiting to be paced out,
and the few ids it maps between turns and utterances.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import numpy as np
import numpy.typing as npt

from assistant.chat.protocol import ErrorFrame, OperatorMessage, Reply, ReplyDelta, ServerFrame
from assistant.chat.session import ChatSession
from assistant.chat.turns import PendingTurn
from assistant.core.redaction import redact
from assistant.voice.models import VoiceModels
from assistant.voice.protocol import VoiceErrorCode
from assistant.voice.speaker import AudioSink, Speaker, SpeakerConfig
from assistant.voice.turns import turn_complete
from fusion import Overloaded
from fusion.asr import Transcript, TurnTranscriber
from fusion.audio import StreamResampler
from fusion.vad import SAMPLE_RATE, SpeechEnded, SpeechPaused, SpeechStarted, VadEvent
from fusion.voice_emotion import voice_emotion_vector
from profiles import NewEvent, NotFound, Store, StoreUnavailable

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]

# Turns awaiting their reply that a call remembers (the session queues at most 16).
MAX_UNANSWERED = 32


class CallRoute(AudioSink, Protocol):
    """What a call tells its caller beyond audio; each route renders it its own way."""

    def mark_for(self, utterance_id: str) -> str | None:
        """The name of the mark that follows the reply to `utterance_id` (None: no marks)."""
        ...

    def transcript(self, utterance_id: str, text: str, at_s: float) -> None: ...

    def replied(self, utterance_id: str, reply: Reply) -> None: ...

    def failed(self, code: VoiceErrorCode, message: str) -> None: ...


@dataclass(frozen=True, slots=True)
class CallConfig:
    # Finished utterances waiting for the recognizer before the caller's audio waits, and
    # how long it waits before the utterance is dropped (a call cannot wait for ever).
    max_utterances: int = 4
    utterance_wait_s: float = 10.0
    # On hang-up: how long the turns still in flight may take to be stored.
    close_timeout_s: float = 30.0
    speaker: SpeakerConfig = field(default_factory=SpeakerConfig)


@dataclass(slots=True)
class CallStats:
    heard_s: float = 0.0
    utterances: int = 0
    turns: int = 0
    barge_ins: int = 0
    dtmf: int = 0
    turn_checks: int = 0  # pauses put to the end-of-turn model
    early_ends: int = 0  # ... that ended the utterance before the longest silence


@dataclass(frozen=True, slots=True)
class _Utterance:
    ended: SpeechEnded
    detected: float  # time.perf_counter() when the VAD saw the end of speech
    transcript: asyncio.Task[Transcript]
    features: asyncio.Task[FloatArray | None]


class VoiceCall:
    def __init__(
        self,
        session: ChatSession,
        store: Store,
        models: VoiceModels,
        speaker: Speaker,
        route: CallRoute,
        input_rate: int,
        config: CallConfig,
    ) -> None:
        self.session = session
        self.id = session.id
        self._store = store
        self._models = models
        self.speaker = speaker
        self._route = route
        self._input_rate = input_rate
        self.config = config
        self.stats = CallStats()
        self._resampler = StreamResampler(input_rate, SAMPLE_RATE)
        self.vad = models.vad.stream(models.config.vad)
        self._transcriber = TurnTranscriber(models.recognizer, speculate=models.config.speculate)
        self._model_turns = models.config.turns.detection == "model"
        self._judging: asyncio.Task[None] | None = None  # the current pause's check
        # The VAD and the handling of its events, one caller at a time: audio arriving, and a
        # check that ends the turn. While an utterance waits for room in the queue, both wait.
        self._listening = asyncio.Lock()
        self._utterances: asyncio.Queue[_Utterance | None] = asyncio.Queue(
            maxsize=config.max_utterances
        )
        # The session's user turn id -> this call's utterance id, until the reply comes.
        self._utterance_of: dict[str, str] = {}
        self._operator_notes = 0
        self._ending = False
        self._closed = False
        session.listener = self._on_frame
        speaker.start()
        self._turns = asyncio.create_task(self._run_utterances(), name=f"utterances-{self.id}")

    # caller input

    async def hear(self, samples: FloatArray) -> None:
        """Caller audio at the input rate, in chunks of any size."""
        if self._ending or samples.size == 0:
            return
        self.stats.heard_s += samples.shape[0] / self._input_rate
        async with self._listening:
            await self._handle(self.vad.feed(self._resampler.process(samples)))

    async def dtmf(self, digit: str) -> None:
        """A keypad press: stored as a behaviour event and folded into the profile."""
        self.stats.dtmf += 1
        event = NewEvent(
            client_id=f"dtmf-{self.id}-{self.stats.dtmf}",
            name="dtmf",
            occurred_at=datetime.now(UTC),
            props={"digit": digit},
        )
        try:
            stored = await self._store.add_events(self.session.user.id, self.id, [event])
        except StoreUnavailable:
            self._route.failed(VoiceErrorCode.UNAVAILABLE, "storage is unavailable")
            return
        self.session.remember_events([event])
        self.session.events_stored(stored)

    def played(self, mark: str) -> None:
        """The caller's side echoed a mark: the reply audio before it has been heard."""
        if not self.speaker.played(mark):
            log.debug("echo of an unknown or cleared mark %r", mark[:64])

    # listening

    async def _handle(self, events: list[VadEvent]) -> None:
        for event in events:
            self._transcriber.observe(event)
            if isinstance(event, SpeechStarted):
                self._onset(event)
            elif isinstance(event, SpeechPaused) and self._model_turns:
                self._judge_soon(event)
            elif isinstance(event, SpeechEnded):
                await self._ended(event)

    def _judge_soon(self, paused: SpeechPaused) -> None:
        if self._judging is not None:
            self._judging.cancel()  # an earlier pause of this utterance: speech came after it
        self._judging = asyncio.create_task(self._judge(paused), name=f"turn-check-{self.id}")

    async def _judge(self, paused: SpeechPaused) -> None:
        """Put one pause to the end-of-turn model (and its speculative transcript, when one
        is being made) and end the utterance if the caller has finished."""
        self.stats.turn_checks += 1
        policy = self._models.config.turns
        speculation = self._transcriber.speculation(paused)
        try:
            probability = await self._models.turn_probability(paused.audio)
        except Exception:
            log.exception("the end-of-turn model failed", extra={"session_id": self.id})
            probability = None
        if probability is None:
            async with self._listening:
                await self._handle(self.vad.end_turn(paused, policy.fallback_silence_ms))
            return
        if probability < policy.threshold:
            return
        text = None
        if speculation is not None:
            await asyncio.wait([speculation])
            if speculation.cancelled():
                return  # the caller spoke again: this pause is over
            if speculation.exception() is None:
                text = speculation.result().text
        if not turn_complete(probability, text, policy.threshold):
            return
        async with self._listening:
            events = self.vad.end_turn(paused)
            self.stats.early_ends += bool(events)
            await self._handle(events)

    def _onset(self, onset: SpeechStarted) -> None:
        cut = self.speaker.interrupt()
        if cut is not None:
            self.stats.barge_ins += 1
            log.info(
                "barge-in over the reply to %s at %.2f s of call audio",
                cut,
                onset.at_s,
                extra={"session_id": self.id},
            )

    async def _ended(self, ended: SpeechEnded) -> None:
        self.stats.utterances += 1
        transcript = asyncio.create_task(self._transcriber.finish(ended))
        # One turn of the loop lets `finish` take over the speculative transcription of this
        # utterance before the next event (a new onset) can drop it.
        await asyncio.sleep(0)
        features = asyncio.create_task(self._models.speech_features(ended.audio))
        utterance = _Utterance(ended, time.perf_counter(), transcript, features)
        try:
            await asyncio.wait_for(self._utterances.put(utterance), self.config.utterance_wait_s)
        except TimeoutError:
            transcript.cancel()
            features.cancel()
            log.warning(
                "utterance dropped: the recognizer is behind", extra={"session_id": self.id}
            )
            self._route.failed(VoiceErrorCode.OVERLOADED, "an utterance was dropped: overloaded")
        except asyncio.CancelledError:
            transcript.cancel()
            features.cancel()
            raise

    async def _run_utterances(self) -> None:
        while True:
            utterance = await self._utterances.get()
            if utterance is None:
                return
            try:
                await self._utterance(utterance)
            except StoreUnavailable:
                self._route.failed(VoiceErrorCode.UNAVAILABLE, "storage is unavailable")
            except Overloaded:
                self._route.failed(VoiceErrorCode.OVERLOADED, "the models are overloaded")
            except NotFound:
                log.info("utterance of an erased caller dropped", extra={"session_id": self.id})
            except Exception:
                log.exception("utterance failed", extra={"session_id": self.id})
                self._route.failed(VoiceErrorCode.INTERNAL, "the utterance could not be handled")
            finally:
                utterance.features.cancel()

    async def _utterance(self, utterance: _Utterance) -> None:
        transcript = await utterance.transcript
        text = transcript.text.strip()
        if not text:
            return  # noise the VAD took for speech: no turn
        session = self.session
        self.stats.turns += 1
        utterance_id = f"u{self.stats.turns}"
        self._route.transcript(utterance_id, text, utterance.ended.at_s)
        speech = await utterance.features
        voice = voice_emotion_vector(transcript.encoder_mean, speech)
        turn, created = await self._store.add_user_turn(
            session.id, session.user.id, utterance_id, redact(text)
        )
        if not created:
            return
        session.user_turn(turn)
        if session.held_by is not None:
            return  # an operator answers; the session stores the turn's labels meanwhile
        if not session.has_room:
            self._route.failed(VoiceErrorCode.OVERLOADED, "too many turns waiting for replies")
            return
        self._utterance_of[turn.id] = utterance_id
        while len(self._utterance_of) > MAX_UNANSWERED:
            # Turns that got no reply (an error, an operator's hold) are forgotten oldest first.
            del self._utterance_of[next(iter(self._utterance_of))]
        session.enqueue(
            PendingTurn(turn.id, utterance_id, text, utterance.detected, turn, speech, voice=voice)
        )

    # the session's frames

    def _on_frame(self, frame: ServerFrame) -> None:
        try:
            self._render(frame)
        except Exception:
            # The turn is stored either way; only the caller's copy of it is lost.
            log.exception("a reply could not be rendered", extra={"session_id": self.id})

    def _render(self, frame: ServerFrame) -> None:
        # The speaker knows replies by the utterance they answer (what the caller sees).
        if isinstance(frame, ReplyDelta):
            self.speaker.say(self._utterance_of.get(frame.turn_id, frame.turn_id), frame.text)
        elif isinstance(frame, Reply):
            utterance_id = self._utterance_of.pop(frame.turn_id, frame.turn_id)
            self.speaker.end(utterance_id, self._route.mark_for(utterance_id))
            self._route.replied(utterance_id, frame)
        elif isinstance(frame, OperatorMessage):
            # A person took the call over: the caller hears what they type.
            self._operator_notes += 1
            key = f"operator-{self._operator_notes}"
            self.speaker.say(key, frame.text)
            self.speaker.end(key, self._route.mark_for(key))
        elif isinstance(frame, ErrorFrame):
            known = {c.value for c in VoiceErrorCode}
            code = VoiceErrorCode(frame.code.value) if frame.code.value in known else None
            self._route.failed(code or VoiceErrorCode.INTERNAL, frame.message)

    # the end

    async def close(self, on_closed: Callable[[VoiceCall], Awaitable[None]]) -> None:
        """Hang up: stop speaking, let the caller's last words and the turns in flight finish
        (within `close_timeout_s`), then hand the call to `on_closed` to end its session."""
        if self._closed:
            return
        self._closed = True
        self._ending = True
        await self.speaker.stop()
        try:
            async with asyncio.timeout(self.config.close_timeout_s):
                if self._judging is not None:
                    # Its answer may end the last utterance; the flush below ends it otherwise.
                    await asyncio.wait([self._judging])
                async with self._listening:
                    await self._handle(self.vad.feed(self._resampler.flush()) + self.vad.flush())
                await self._utterances.put(None)
                await self._turns
                await self.session.settle()
        except TimeoutError:
            log.warning("call closed with turns unfinished", extra={"session_id": self.id})
        finally:
            if self._judging is not None:
                self._judging.cancel()
            self._turns.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._turns
            while not self._utterances.empty():
                left = self._utterances.get_nowait()
                if left is not None:
                    left.transcript.cancel()
                    left.features.cancel()
            await self._transcriber.aclose()
            self.session.listener = None
            await on_closed(self)
