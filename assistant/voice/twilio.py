"""The `/voice/twilio` route: one TwilioConnection per Twilio Media Stream.

Bad input: Twilio has no error message, so a message that cannot be used (invalid JSON,
invalid base64, a missing field, an unknown event, a binary frame) is ignored and the call
goes on; the first is logged as a warning, later ones at debug level, and the count is
logged when the call ends. A stream that cannot work at all (a `start` in another media
format or with a refused token, `media` or `dtmf` before `start`) is logged in one line and
closed with 1003 (unsupported data) or 1008 (policy violation). Both count in /metrics by
their error code, as other routes' error frames do.
"""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt

from assistant.chat.protocol import Reply
from assistant.core.outbox import Transport
from assistant.core.wire import (
    CLOSE_INTERNAL,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_SERVICE_RESTART,
    CLOSE_UNSUPPORTED,
)
from assistant.voice.protocol import (
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
    VoiceError,
    VoiceErrorCode,
    parse_twilio,
    serialize_twilio,
)
from assistant.voice.service import VoiceConnection, VoiceService
from assistant.voice.synthesis import mulaw_frames
from fusion.audio import mulaw_decode
from profiles import StoreUnavailable

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]

# Twilio's media format, the only one it streams.
TWILIO_RATE = 8000


class TwilioConnection(VoiceConnection):
    """One Twilio Media Stream: see the module docstring for how bad input is handled."""

    ROUTE = "/voice/twilio"

    def __init__(self, service: VoiceService, transport: Transport) -> None:
        super().__init__(service, transport)
        self._stream_sid: str | None = None
        self._ignored = 0

    async def on_binary(self, _data: bytes) -> None:
        self._ignore(VoiceErrorCode.INVALID_FRAME, "a binary frame (Twilio sends JSON text)")

    async def on_text(self, text: str) -> None:
        if self._ended:
            return  # the stream was refused or stopped: what follows is not listened to
        frame = parse_twilio(text)
        if isinstance(frame, VoiceError):
            if frame.code == VoiceErrorCode.UNSUPPORTED_AUDIO:
                self._refuse(CLOSE_UNSUPPORTED, frame.code, frame.message)
            elif frame.kind == "start":
                self._refuse(CLOSE_POLICY, frame.code, frame.message)
            else:
                self._ignore(frame.code, frame.message)
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
            self._ignore(VoiceErrorCode.ALREADY_STARTED, "a second 'start'")
            return
        if self._service.draining:
            self._refuse(CLOSE_SERVICE_RESTART, VoiceErrorCode.UNAVAILABLE, "service restart")
            return
        params = frame.custom_parameters
        caller = self._identify(
            params.get("token"),
            params.get("external_id"),
            params.get("name"),
            params.get("locale"),
        )
        if isinstance(caller, str):
            self._refuse(CLOSE_POLICY, VoiceErrorCode.UNAUTHORIZED, caller)
            return
        self._stream_sid = frame.stream_sid
        try:
            self.call = await self._service.open_call(caller, self, TWILIO_RATE)
        except StoreUnavailable:
            self._refuse(CLOSE_INTERNAL, VoiceErrorCode.UNAVAILABLE, "storage is unavailable")

    def _before_start(self, event: str) -> None:
        self._refuse(CLOSE_POLICY, VoiceErrorCode.START_REQUIRED, f"'{event}' before 'start'")

    def _refuse(self, code: int, error: VoiceErrorCode, reason: str) -> None:
        log.warning("twilio stream closed (%d): %s", code, reason)
        self._count_error(error)
        self._ended = True
        # A close reason holds at most 123 bytes of UTF-8.
        self._outbox.close_soon(code, reason.encode()[:120].decode("utf-8", "ignore"))

    def _ignore(self, error: VoiceErrorCode, what: str) -> None:
        self._ignored += 1
        self._count_error(error)
        level = logging.WARNING if self._ignored == 1 else logging.DEBUG
        log.log(level, "twilio message ignored: %s: %s", error.value, what[:200])

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
        self._count_error(code)
        log.warning("twilio call: %s: %s", code.value, message)
