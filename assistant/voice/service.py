"""The voice calls' shared state: VoiceService, and what both routes' connections share.

VoiceService owns what every call shares (the VAD model, the end-of-turn model, the speech
recognizer, the speech featurizer and the synthesizer, loaded once) and the live calls. Each
WebSocket gets a connection that speaks its route's protocol and drives one VoiceCall:
`/voice/twilio` (Twilio Media Streams, assistant/voice/twilio.py) or `/voice` (native audio,
assistant/voice/native.py). The same models hear the voice notes of /chat (`hear_note`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from assistant.chat.identity import Identity, identify
from assistant.chat.service import ChatService
from assistant.chat.voice_notes import HeardNote
from assistant.core.outbox import Outbox, Transport
from assistant.core.wire import CLOSE_SERVICE_RESTART
from assistant.voice.call import CallConfig, CallRoute, VoiceCall
from assistant.voice.models import VoiceModels, VoiceModelsConfig
from assistant.voice.protocol import VoiceErrorCode
from assistant.voice.speaker import Speaker
from fusion.voice_emotion import voice_emotion_vector
from profiles import StoreUnavailable

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class VoiceConfig:
    models: VoiceModelsConfig = field(default_factory=VoiceModelsConfig)
    call: CallConfig = field(default_factory=CallConfig)
    # Frames a call's socket may have waiting to be sent before the caller is dropped.
    send_queue: int = 1000
    # A voice session is not resumable: it keeps only a few frames for operators to replay.
    replay_frames: int = 64


class VoiceService:
    """Owns the voice models (loaded on first use, or handed in) and every live call."""

    def __init__(
        self,
        chat: ChatService,
        config: VoiceConfig,
        widget_secret: str | None = None,
        models: VoiceModels | None = None,
    ) -> None:
        self.chat = chat
        self.config = config
        self.widget_secret = widget_secret
        self._models = models
        self._own_models = models is None
        self._loading = asyncio.Lock()
        self.calls: dict[str, VoiceCall] = {}
        self._connections: set[VoiceConnection] = set()
        # Set by `drain`: no new calls; live ones are ended with their turns stored.
        self.draining = False

    @property
    def loaded(self) -> bool:
        return self._models is not None

    async def load(self) -> VoiceModels:
        """The voice models, loaded (off the event loop) and started on first use."""
        async with self._loading:
            if self._models is None:
                self._models = await asyncio.to_thread(VoiceModels.load, self.config.models)
            self._models.start()
            return self._models

    async def hear_note(self, audio_16k: FloatArray) -> HeardNote:
        """A chat voice note (16 kHz float mono) heard as a caller's utterance is: the
        recognizer's transcript, the featurizer's speech vector and what the emotion head
        hears (assistant.chat.voice_notes.NoteHearing)."""
        models = await self.load()
        features = asyncio.ensure_future(models.speech_features(audio_16k))
        try:
            transcript = await models.recognizer.transcribe(audio_16k)
            speech = await features
        finally:
            features.cancel()
        voice = voice_emotion_vector(transcript.encoder_mean, speech)
        return HeardNote(transcript.text.strip(), speech, voice)

    async def drain(self) -> None:
        """SIGTERM: take no new calls; end the live ones (their turns in flight are stored)
        and close their sockets with 1012."""
        self.draining = True
        connections = list(self._connections)
        await asyncio.gather(
            *(c.hang_up(CLOSE_SERVICE_RESTART, "service restart") for c in connections)
        )

    async def stop(self) -> None:
        await self.drain()
        if self._models is not None and self._own_models:
            await self._models.stop()

    async def open_call(self, caller: Identity, route: CallRoute, input_rate: int) -> VoiceCall:
        models = await self.load()
        store = self.chat.store
        user = await store.upsert_user(
            caller.tenant, caller.external_id, name=caller.name, locale=caller.locale
        )
        conversation = await store.open_conversation(user.id, "voice")
        session = self.chat.new_session(user, conversation, self.config.replay_frames)
        # The call holds the session for its whole length: never reaped as abandoned.
        session.detached_since = None
        self.chat.sessions[session.id] = session
        speaker = Speaker(models.tts, route, self.config.call.speaker)
        call = VoiceCall(session, store, models, speaker, route, input_rate, self.config.call)
        self.calls[call.id] = call
        log.info(
            "call started",
            extra={"session_id": session.id, "user_id": user.id, "speaks": speaker.speaks},
        )
        return call

    async def finish_call(self, call: VoiceCall) -> None:
        """A call ended: close its session and conversation."""
        self.calls.pop(call.id, None)
        session = call.session
        if self.chat.sessions.get(session.id) is session:
            del self.chat.sessions[session.id]
        await session.close()
        with contextlib.suppress(StoreUnavailable, LookupError):
            await self.chat.store.set_conversation_status(session.id, "closed")
        stats = call.stats
        log.info(
            "call ended: %.1f s heard, %d utterances (%d pauses put to the end-of-turn model, "
            "%d ended by it), %d turns, %d barge-ins, %d digits",
            stats.heard_s,
            stats.utterances,
            stats.turn_checks,
            stats.early_ends,
            stats.turns,
            stats.barge_ins,
            stats.dtmf,
            extra={"session_id": session.id},
        )


class VoiceConnection:
    """What both routes' connections share: the socket's outbox and the call it drives. Each
    route's subclass (assistant/voice/twilio.py, assistant/voice/native.py) is also its
    call's CallRoute: it renders transcripts, replies, audio and marks its way."""

    # The route's path, which labels its errors in /metrics.
    ROUTE = ""

    def __init__(self, service: VoiceService, transport: Transport) -> None:
        self._service = service
        self._outbox = Outbox(transport, service.config.send_queue)
        self._outbox.start()
        self.call: VoiceCall | None = None
        self._ended = False
        service._connections.add(self)

    @property
    def started(self) -> bool:
        """The call started (the server's opening-frame deadline stops counting)."""
        return self.call is not None

    def _count_error(self, code: VoiceErrorCode) -> None:
        """assistant_errors_total, as /chat counts its error frames."""
        self._service.chat.metrics.error(self.ROUTE, code.value)

    def _identify(
        self, token: str | None, external_id: str | None, name: str | None, locale: str | None
    ) -> Identity | str:
        """Who is calling, or why the call is refused (the same rules as /chat's `hello`)."""
        caller = identify(self._service.widget_secret, token, external_id, name, locale)
        if caller is None:
            return "a signed token is required"
        if not isinstance(caller, Identity):
            return f"token refused: {caller.value}"
        return caller

    async def _end(self) -> None:
        """The caller hung up (or went away): finish the call's turns and close it."""
        # Not guarded by `_ended`: a refused message sets it while a call may be running.
        self._ended = True
        call, self.call = self.call, None
        if call is not None:
            await call.close(self._service.finish_call)

    async def hang_up(self, code: int, reason: str) -> None:
        """End the call from the server's side, then close the socket."""
        await self._end()
        self._outbox.close_soon(code, reason)

    async def closed(self) -> None:
        """The socket closed."""
        await self._end()
        await self._outbox.stop()
        self._service._connections.discard(self)
