"""The `/voice` route: one NativeConnection per call, JSON control frames and binary audio.

Every refusal is an `error` frame with a code; only a refused token closes the connection.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt

from assistant.chat.protocol import Reply
from assistant.core.outbox import Transport
from assistant.core.wire import CLOSE_NORMAL, CLOSE_POLICY, CLOSE_SERVICE_RESTART
from assistant.voice.protocol import (
    Transcript,
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
    parse_voice,
    serialize_voice,
)
from assistant.voice.service import VoiceConnection, VoiceService
from assistant.voice.synthesis import mulaw_frames, pcm16_frames
from fusion.audio import mulaw_decode, pcm16_decode
from profiles import StoreUnavailable

FloatArray = npt.NDArray[np.float32]


class NativeConnection(VoiceConnection):
    """One `/voice` connection: JSON `start`, then binary audio in the announced format."""

    ROUTE = "/voice"

    def __init__(self, service: VoiceService, transport: Transport) -> None:
        super().__init__(service, transport)
        self._encoding: Literal["pcm16", "mulaw"] = "pcm16"
        self._rate = 16000
        # A pcm16 frame may end mid-sample: its odd byte waits for the next frame.
        self._odd_byte = b""
        self._told_to_start = False

    def _send(self, frame: VoiceServerFrame) -> None:
        if isinstance(frame, VoiceErrorFrame):
            self._count_error(frame.code)
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
        caller = self._identify(
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
                reply.waiting,
                reply.turn,
                reply.suggestions,
            )
        )

    def failed(self, code: VoiceErrorCode, message: str) -> None:
        self._error(code, message)
