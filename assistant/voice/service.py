"""The voice routes: `/voice/twilio` (Twilio Media Streams) and `/voice` (native audio).

VoiceService owns what every call shares (the VAD model, the speech recognizer, the speech
featurizer and the synthesizer, loaded once) and the live calls. Each WebSocket gets a
connection object that speaks its route's protocol and drives one VoiceCall.

Bad input on `/voice/twilio`: Twilio has no error message, so a message that cannot be used
(invalid JSON, invalid base64, a missing field, an unknown event, a binary frame) is
ignored and the call goes on; the first is logged as a warning, later ones at debug level,
and the count is logged when the call ends. A stream that cannot work at all (a `start` in
another media format or with a refused token, `media` or `dtmf` before `start`) is logged
in one line and closed with 1003 (unsupported data) or 1008 (policy violation). On `/voice`
every refusal is an `error` frame with a code; only a refused token closes the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from assistant.chat.connection import ANONYMOUS_TENANT, ChatService
from assistant.chat.protocol import Reply
from assistant.chat.session import ChatSession
from assistant.chat.widget_tokens import Claims, verify_token
from assistant.core.outbox import Outbox, Transport
from assistant.core.wire import (
    CLOSE_INTERNAL,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_SERVICE_RESTART,
    CLOSE_UNSUPPORTED,
)
from assistant.voice.call import CallConfig, CallRoute, VoiceCall
from assistant.voice.models import VoiceModels, VoiceModelsConfig
from assistant.voice.protocol import (
    Transcript,
    TwilioClear,
    TwilioConnected,
    TwilioDtmf,
    TwilioMarkEcho,
    TwilioMedia,
    TwilioOutFrame,
    TwilioOutMark,
    TwilioOutMedia,
    TwilioStart,
    TwilioStop,
    VoiceClear,
    VoiceDtmf,
    VoiceError,
    VoiceErrorCode,
    VoiceErrorFrame,
    VoiceReply,
    VoiceServerFrame,
    VoiceStart,
    VoiceStarted,
    VoiceStop,
    parse_twilio,
    parse_voice,
    serialize_twilio,
    serialize_voice,
)
from assistant.voice.speaker import Speaker
from assistant.voice.synthesis import mulaw_frames, pcm16_frames
from fusion.audio import mulaw_decode, pcm16_decode
from profiles import StoreUnavailable

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]

# Twilio's media format, the only one it streams.
TWILIO_RATE = 8000


@dataclass(frozen=True, slots=True)
class VoiceConfig:
    models: VoiceModelsConfig = field(default_factory=VoiceModelsConfig)
    call: CallConfig = field(default_factory=CallConfig)
    # Frames a call's socket may have waiting to be sent before the caller is dropped.
    send_queue: int = 1000
    # A voice session is not resumable: it keeps only a few frames for operators to replay.
    replay_frames: int = 64


@dataclass(frozen=True, slots=True)
class _Caller:
    tenant: str
    external_id: str
    name: str | None
    locale: str | None


def _identify(
    secret: str | None,
    token: str | None,
    external_id: str | None,
    name: str | None,
    locale: str | None,
) -> _Caller | str:
    """Who is calling, or why the call is refused (the same rules as /chat's `hello`)."""
    if secret is not None:
        if token is None:
            return "a signed token is required"
        claims = verify_token(secret, token)
        if not isinstance(claims, Claims):
            return f"token refused: {claims.value}"
        return _Caller(claims.tenant, claims.external_id, claims.name or name, locale)
    if external_id:
        return _Caller(ANONYMOUS_TENANT, external_id, name, locale)
    return _Caller(ANONYMOUS_TENANT, f"anon-{uuid.uuid4().hex}", None, None)


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
        self._routes: set[_Route] = set()
        # Set by `drain`: no new calls; live ones are ended with their turns stored.
        self.draining = False

    async def load(self) -> VoiceModels:
        """The voice models, loaded (off the event loop) and started on first use."""
        async with self._loading:
            if self._models is None:
                self._models = await asyncio.to_thread(VoiceModels.load, self.config.models)
            self._models.start()
            return self._models

    async def drain(self) -> None:
        """SIGTERM: take no new calls; end the live ones (their turns in flight are stored)
        and close their sockets with 1012."""
        self.draining = True
        routes = list(self._routes)
        await asyncio.gather(*(r.hang_up(CLOSE_SERVICE_RESTART, "service restart") for r in routes))

    async def stop(self) -> None:
        await self.drain()
        if self._models is not None and self._own_models:
            await self._models.stop()

    def twilio(self, transport: Transport) -> TwilioConnection:
        return TwilioConnection(self, transport)

    def native(self, transport: Transport) -> NativeConnection:
        return NativeConnection(self, transport)

    async def open_call(self, caller: _Caller, route: CallRoute, input_rate: int) -> VoiceCall:
        models = await self.load()
        store = self.chat.store
        user = await store.upsert_user(
            caller.tenant, caller.external_id, name=caller.name, locale=caller.locale
        )
        conversation = await store.open_conversation(user.id, "voice")
        replay = self.config.replay_frames
        session = ChatSession(self.chat, user, conversation, replay_frames=replay)
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
            "call ended: %.1f s heard, %d utterances, %d turns, %d barge-ins, %d digits",
            stats.heard_s,
            stats.utterances,
            stats.turns,
            stats.barge_ins,
            stats.dtmf,
            extra={"session_id": session.id},
        )


class _Route:
    """What both routes share: the socket's outbox and the call it drives. Each subclass is
    also its call's CallRoute: it renders transcripts, replies, audio and marks its way."""

    def __init__(self, service: VoiceService, transport: Transport) -> None:
        self._service = service
        self._outbox = Outbox(transport, service.config.send_queue)
        self._outbox.start()
        self.call: VoiceCall | None = None
        self._ended = False
        service._routes.add(self)

    @property
    def started(self) -> bool:
        """The call started (the server's opening-frame deadline stops counting)."""
        return self.call is not None

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
        self._service._routes.discard(self)


class TwilioConnection(_Route):
    """One Twilio Media Stream: see the module docstring for how bad input is handled."""

    def __init__(self, service: VoiceService, transport: Transport) -> None:
        super().__init__(service, transport)
        self._stream_sid: str | None = None
        self._ignored = 0

    async def on_binary(self, _data: bytes) -> None:
        self._ignore("a binary frame (Twilio sends JSON text)")

    async def on_text(self, text: str) -> None:
        if self._ended:
            return  # the stream was refused or stopped: what follows is not listened to
        frame = parse_twilio(text)
        if isinstance(frame, VoiceError):
            if frame.code == VoiceErrorCode.UNSUPPORTED_AUDIO:
                self._refuse(CLOSE_UNSUPPORTED, frame.message)
            elif frame.kind == "start":
                self._refuse(CLOSE_POLICY, frame.message)
            else:
                self._ignore(f"{frame.code.value}: {frame.message}")
            return
        if isinstance(frame, TwilioMedia):
            if self.call is None:
                self._before_start("media")
            elif frame.track == "inbound" and frame.payload:
                await self.call.hear(mulaw_decode(np.frombuffer(frame.payload, dtype=np.uint8)))
        elif isinstance(frame, TwilioStart):
            await self._start(frame)
        elif isinstance(frame, TwilioMarkEcho):
            if self.call is not None:
                self.call.played(frame.name)
        elif isinstance(frame, TwilioDtmf):
            if self.call is None:
                self._before_start("dtmf")
            else:
                await self.call.dtmf(frame.digit)
        elif isinstance(frame, TwilioStop):
            await self.hang_up(CLOSE_NORMAL, "stream stopped")
        else:
            assert isinstance(frame, TwilioConnected)

    async def _start(self, frame: TwilioStart) -> None:
        if self.call is not None:
            self._ignore("a second 'start'")
            return
        if self._service.draining:
            self._refuse(CLOSE_SERVICE_RESTART, "service restart")
            return
        params = frame.custom_parameters
        caller = _identify(
            self._service.widget_secret,
            params.get("token"),
            params.get("external_id"),
            params.get("name"),
            params.get("locale"),
        )
        if isinstance(caller, str):
            self._refuse(CLOSE_POLICY, caller)
            return
        self._stream_sid = frame.stream_sid
        try:
            self.call = await self._service.open_call(caller, self, TWILIO_RATE)
        except StoreUnavailable:
            self._refuse(CLOSE_INTERNAL, "storage is unavailable")

    def _before_start(self, event: str) -> None:
        self._refuse(CLOSE_POLICY, f"'{event}' before 'start'")

    def _refuse(self, code: int, reason: str) -> None:
        log.warning("twilio stream closed (%d): %s", code, reason)
        self._ended = True
        # A close reason holds at most 123 bytes of UTF-8.
        self._outbox.close_soon(code, reason.encode()[:120].decode("utf-8", "ignore"))

    def _ignore(self, what: str) -> None:
        self._ignored += 1
        level = logging.WARNING if self._ignored == 1 else logging.DEBUG
        log.log(level, "twilio message ignored: %s", what[:200])

    async def closed(self) -> None:
        await super().closed()
        if self._ignored:
            log.info("twilio stream ended; %d bad messages were ignored", self._ignored)

    # CallRoute

    def _put(self, frame: TwilioOutFrame) -> None:
        self._outbox.put(serialize_twilio(frame))

    def frames(self, audio: FloatArray, sample_rate: int) -> list[bytes]:
        return mulaw_frames(audio, sample_rate)

    def send_frame(self, frame: bytes) -> None:
        if self._stream_sid is not None:
            self._put(TwilioOutMedia(self._stream_sid, frame))

    def send_mark(self, name: str) -> None:
        if self._stream_sid is not None:
            self._put(TwilioOutMark(self._stream_sid, name))

    def send_clear(self, key: str | None) -> None:
        if self._stream_sid is not None:
            self._put(TwilioClear(self._stream_sid))

    def mark_for(self, utterance_id: str) -> str | None:
        return f"reply-{utterance_id}"

    def transcript(self, utterance_id: str, text: str, at_s: float) -> None:
        return None  # Twilio has no message for it: the transcript is the stored turn

    def replied(self, utterance_id: str, reply: Reply) -> None:
        return None  # heard as audio

    def failed(self, code: VoiceErrorCode, message: str) -> None:
        log.warning("twilio call: %s: %s", code.value, message)


class NativeConnection(_Route):
    """One `/voice` connection: JSON `start`, then binary audio in the announced format."""

    def __init__(self, service: VoiceService, transport: Transport) -> None:
        super().__init__(service, transport)
        self._encoding: Literal["pcm16", "mulaw"] = "pcm16"
        self._rate = 16000
        # A pcm16 frame may end mid-sample: its odd byte waits for the next frame.
        self._odd_byte = b""
        self._told_to_start = False

    def _send(self, frame: VoiceServerFrame) -> None:
        self._outbox.put(serialize_voice(frame))

    def _error(self, code: VoiceErrorCode, message: str) -> None:
        self._send(VoiceErrorFrame(code, message))

    async def on_text(self, text: str) -> None:
        frame = parse_voice(text)
        if isinstance(frame, VoiceError):
            self._send(VoiceErrorFrame.of(frame))
        elif isinstance(frame, VoiceStart):
            await self._start(frame)
        elif self.call is None:
            self._error(VoiceErrorCode.START_REQUIRED, "send 'start' first")
        elif isinstance(frame, VoiceDtmf):
            await self.call.dtmf(frame.digit)
        else:
            assert isinstance(frame, VoiceStop)
            await self.hang_up(CLOSE_NORMAL, "call ended")

    async def on_binary(self, data: bytes) -> None:
        call = self.call
        if call is None:
            if not self._told_to_start:
                self._told_to_start = True
                self._error(VoiceErrorCode.START_REQUIRED, "send 'start' before audio")
            return
        if self._encoding == "mulaw":
            samples = mulaw_decode(np.frombuffer(data, dtype=np.uint8))
        else:
            joined = self._odd_byte + data
            whole = len(joined) - len(joined) % 2
            self._odd_byte = joined[whole:]
            samples = pcm16_decode(joined[:whole])
        await call.hear(samples)

    async def _start(self, frame: VoiceStart) -> None:
        if self.call is not None or self._ended:
            self._error(VoiceErrorCode.ALREADY_STARTED, "this connection already started a call")
            return
        if self._service.draining:
            self._error(VoiceErrorCode.UNAVAILABLE, "the server is restarting; call again")
            self._ended = True
            self._outbox.close_soon(CLOSE_SERVICE_RESTART, "service restart")
            return
        user = frame.user
        caller = _identify(
            self._service.widget_secret,
            frame.token,
            user.external_id if user else None,
            user.name if user else None,
            user.locale if user else None,
        )
        if isinstance(caller, str):
            self._error(VoiceErrorCode.UNAUTHORIZED, caller)
            self._ended = True
            self._outbox.close_soon(CLOSE_POLICY, "unauthorized")
            return
        self._encoding, self._rate = frame.encoding, frame.sample_rate
        try:
            call = await self._service.open_call(caller, self, frame.sample_rate)
        except StoreUnavailable:
            self._error(VoiceErrorCode.UNAVAILABLE, "storage is unavailable; send 'start' again")
            return
        self.call = call
        self._send(
            VoiceStarted(
                call_id=call.id,
                user_id=call.session.user.id,
                encoding=frame.encoding,
                sample_rate=frame.sample_rate,
                speaks=call.speaker.speaks,
            )
        )

    # CallRoute

    def frames(self, audio: FloatArray, sample_rate: int) -> list[bytes]:
        if self._encoding == "mulaw":
            return mulaw_frames(audio, sample_rate)
        return pcm16_frames(audio, sample_rate, self._rate)

    def send_frame(self, frame: bytes) -> None:
        self._outbox.put(frame)

    def send_mark(self, name: str) -> None:
        return None  # marks are Twilio's; a native client knows its playback itself

    def mark_for(self, utterance_id: str) -> str | None:
        return None

    def send_clear(self, key: str | None) -> None:
        self._send(VoiceClear(key))

    def transcript(self, utterance_id: str, text: str, at_s: float) -> None:
        self._send(Transcript(utterance_id, text, at_s))

    def replied(self, utterance_id: str, reply: Reply) -> None:
        self._send(
            VoiceReply(
                utterance_id,
                reply.text,
                reply.intent,
                reply.emotion,
                reply.handoff,
            )
        )

    def failed(self, code: VoiceErrorCode, message: str) -> None:
        self._error(code, message)
