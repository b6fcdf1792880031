"""One /chat WebSocket: ChatConnection turns its frames into the work of a session.

server.py feeds it frames; `hello` opens, resumes or adopts a session of the ChatService
(assistant/chat/service.py), and every later frame is answered within that session.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from assistant.chat.identity import Identity, identify
from assistant.chat.protocol import (
    MAX_NOTE_SECONDS,
    Ack,
    Audio,
    ClientFrame,
    ErrorCode,
    ErrorFrame,
    Event,
    EventItem,
    Events,
    Hello,
    Message,
    ProtocolError,
    ServerFrame,
    Welcome,
    parse_client_frame,
    serialize,
)
from assistant.chat.service import ChatService
from assistant.chat.session import ChatSession
from assistant.chat.turns import PendingTurn
from assistant.chat.voice_notes import HeardNote, NoteHearing, PartHeld, WholeNote
from assistant.core.logs import bind_ids
from assistant.core.outbox import Outbox, Transport
from assistant.core.redaction import redact
from assistant.core.wire import CLOSE_POLICY, CLOSE_SERVICE_RESTART, Ping, Pong
from fusion.recordings import RecordingTooLong, UndecodableRecording, decode_note
from profiles import NewEvent, NotFound, StoreUnavailable, UserRecord

log = logging.getLogger(__name__)


class ChatConnection:
    """One WebSocket on /chat. server.py feeds it frames; it never raises on client input."""

    def __init__(self, service: ChatService, transport: Transport) -> None:
        self._service = service
        self._outbox = Outbox(transport, service.config.send_queue)
        self._outbox.start()
        self._id = uuid.uuid4().hex  # names this connection's rate-limit counter
        self.session: ChatSession | None = None

    @property
    def started(self) -> bool:
        return self.session is not None

    async def on_binary(self, _data: bytes) -> None:
        self._reply(
            ErrorFrame(
                ErrorCode.BINARY_NOT_SUPPORTED,
                "/chat takes JSON text frames; send voice notes as an 'audio' frame",
            )
        )

    async def on_text(self, text: str) -> None:
        received = time.perf_counter()
        frame = parse_client_frame(text)
        if isinstance(frame, ProtocolError):
            self._reply(ErrorFrame.of(frame))
            return
        if isinstance(frame, Ping):
            self._direct(Pong(id=frame.id))
            return
        if self._service.draining:
            # Nothing new is taken while draining: the client resends what was not acked
            # after it reconnects, and a connection without a session just goes.
            if self.session is None:
                self._outbox.close_soon(CLOSE_SERVICE_RESTART, "service restart")
            return
        if isinstance(frame, Hello):
            await self._hello(frame)
            return
        if self.session is None:
            ref = getattr(frame, "id", None)
            self._direct(ErrorFrame(ErrorCode.HELLO_REQUIRED, "send 'hello' first", ref))
            return
        try:
            await self._dispatch(self.session, frame, received)
        except StoreUnavailable:
            # Connection-scoped: nothing was stored, and a numbered frame could not be sent
            # before the database is back (session frames are stored before they are sent).
            ref = getattr(frame, "id", None)
            self._direct(ErrorFrame(ErrorCode.UNAVAILABLE, "storage is unavailable", ref))
        except NotFound:
            # The session's user was erased while this connection was closing.
            log.info("frame for an erased session dropped", extra={"session_id": self.session.id})

    async def closed(self) -> None:
        if self.session is not None:
            self.session.detach(self._outbox)
        self._service.limiter.forget_connection(self._id)
        await self._outbox.stop()

    # frames

    def _direct(self, frame: ServerFrame) -> None:
        """A connection-scoped frame: seq 0, not part of the session's replayable stream."""
        if isinstance(frame, ErrorFrame):
            self._service.metrics.error("/chat", frame.code.value)
        self._outbox.put(serialize(frame, 0))

    def _reply(self, frame: ServerFrame) -> None:
        if self.session is not None:
            self.session.emit(frame)
        else:
            self._direct(frame)

    def _refuse(self, code: ErrorCode, message: str) -> None:
        self._direct(ErrorFrame(code, message))
        self._outbox.close_soon(CLOSE_POLICY, code.value)

    async def _dispatch(self, session: ChatSession, frame: ClientFrame, received: float) -> None:
        if isinstance(frame, Message):
            await self._message(session, frame, received)
        elif isinstance(frame, Event | Events):
            await self._events(session, frame)
        elif isinstance(frame, Audio):
            await self._audio(session, frame, received)

    async def _admitted(self, session: ChatSession, client_id: str) -> bool:
        """Whether a new message (or a whole voice note) may be taken now; if not, the
        client was told why."""
        if not session.has_room:
            session.emit(
                ErrorFrame(ErrorCode.OVERLOADED, "too many messages waiting for replies", client_id)
            )
            return False
        if not await self._service.limiter.allow_message(self._id, session.user.id):
            session.emit(
                ErrorFrame(
                    ErrorCode.RATE_LIMITED,
                    "too many messages: send it again in a few seconds",
                    client_id,
                )
            )
            return False
        return True

    async def _message(self, session: ChatSession, frame: Message, received: float) -> None:
        if not await self._admitted(session, frame.id):
            return
        service = self._service
        # The models start on the message while it is being stored: the ack waits for the
        # commit, the reply for the models, and neither for the other.
        reading = session.start_reading(frame.text)
        try:
            turn, created = await service.store.add_user_turn(
                session.id, session.user.id, frame.id, redact(frame.text)
            )
        except BaseException:
            if reading is not None:
                reading.cancel()
            raise
        # While a person holds the conversation the message goes live to their console
        # (user_turn), not to the bot: the ack says so.
        held = session.held_by is not None
        session.emit(Ack(id=frame.id, delivered_to="operator" if held else None))
        if created:
            service.metrics.message_stored()
            session.user_turn(turn)
        if created and session.held_by is None:
            session.enqueue(
                PendingTurn(turn.id, frame.id, frame.text, received, turn, reading=reading)
            )
        elif reading is not None:
            reading.cancel()

    async def _audio(self, session: ChatSession, frame: Audio, received: float) -> None:
        """A part of a voice note: held and acked, or, with the last part, the whole note
        heard, stored as the user's turn and answered as a message is."""
        hearing = self._service.hearing
        if hearing is None:
            session.emit(
                ErrorFrame(ErrorCode.NOT_SUPPORTED, "this server takes no voice notes", frame.id)
            )
            return
        now = time.monotonic()
        session.notes.expire(now - self._service.config.note_timeout_s)
        taken = session.notes.take(frame, now)
        if taken is None:
            return
        if isinstance(taken, ProtocolError):
            self._refuse_note(session, taken)
        elif isinstance(taken, PartHeld):
            session.emit(Ack(id=frame.id, part=taken.part, transcript=taken.transcript))
        else:
            stored: str | None = None
            try:
                stored = await self._note(session, taken, hearing, received)
            finally:
                session.notes.finished(taken, stored)

    async def _note(
        self, session: ChatSession, note: WholeNote, hearing: NoteHearing, received: float
    ) -> str | None:
        """Hear a whole note and store it as the user's turn, the transcript its text; the
        stored text, or None when the note was refused (nothing is stored then)."""
        if not await self._admitted(session, note.note_id):
            return None
        heard = await self._hear(note, hearing)
        if isinstance(heard, ProtocolError):
            self._refuse_note(session, heard)
            return None
        service = self._service
        turn, created = await service.store.add_user_turn(
            session.id, session.user.id, note.note_id, redact(heard.text)
        )
        held = session.held_by is not None
        session.emit(
            Ack(
                id=note.note_id,
                delivered_to="operator" if held else None,
                part=note.last_part,
                transcript=turn.text,
            )
        )
        if created:
            service.metrics.voice_note("stored")
            session.user_turn(turn)
        if created and not held:
            session.enqueue(
                PendingTurn(
                    turn.id,
                    note.note_id,
                    heard.text,
                    received,
                    turn,
                    speech=heard.speech,
                    voice=heard.voice,
                )
            )
        return turn.text

    async def _hear(self, note: WholeNote, hearing: NoteHearing) -> HeardNote | ProtocolError:
        """A whole note decoded (off the event loop) and heard, or why it cannot be."""
        ref = note.note_id
        try:
            audio = await asyncio.to_thread(
                decode_note,
                note.data,
                note.encoding,
                note.sample_rate,
                max_seconds=MAX_NOTE_SECONDS,
            )
        except RecordingTooLong as exc:
            return ProtocolError(ErrorCode.NOTE_TOO_LONG, f"voice note: {exc}", ref)
        except UndecodableRecording as exc:
            message = f"the voice note is not {note.encoding} audio: {str(exc)[:200]}"
            return ProtocolError(ErrorCode.UNDECODABLE_AUDIO, message, ref)
        try:
            heard = await hearing.hear_note(audio)
        except Exception:
            log.exception("a voice note could not be heard")
            return ProtocolError(ErrorCode.INTERNAL, "the voice note could not be heard", ref)
        if not heard.text:
            return ProtocolError(ErrorCode.NO_SPEECH, "no speech was heard in the voice note", ref)
        return heard

    def _refuse_note(self, session: ChatSession, refusal: ProtocolError) -> None:
        self._service.metrics.voice_note(refusal.code.value)
        session.emit(ErrorFrame.of(refusal))

    async def _events(self, session: ChatSession, frame: Event | Events) -> None:
        items: tuple[EventItem, ...] = frame.items if isinstance(frame, Events) else (frame,)
        events = [
            NewEvent(client_id=i.id, name=i.name, occurred_at=i.at, props=dict(i.props))
            for i in items
        ]
        stored = await self._service.store.add_events(session.user.id, session.id, events)
        session.emit(Ack(id=frame.id, stored=stored, duplicates=len(events) - stored))
        session.remember_events(events)
        session.events_stored(stored)

    # hello

    def _identify(self, frame: Hello) -> Identity | ProtocolError:
        user = frame.user
        identity = identify(
            self._service.config.widget_secret,
            frame.token,
            user.external_id if user else None,
            user.name if user else None,
            user.locale if user else None,
        )
        if identity is None:
            return ProtocolError(ErrorCode.UNAUTHORIZED, "a signed widget token is required")
        if not isinstance(identity, Identity):
            return ProtocolError(ErrorCode.UNAUTHORIZED, f"token refused: {identity.value}")
        return identity

    async def _hello(self, frame: Hello) -> None:
        if self.session is not None:
            self._reply(ErrorFrame(ErrorCode.ALREADY_STARTED, "this connection already said hello"))
            return
        identity = self._identify(frame)
        if isinstance(identity, ProtocolError):
            self._refuse(identity.code, identity.message)
            return
        service = self._service
        try:
            user = await service.store.upsert_user(
                identity.tenant, identity.external_id, name=identity.name, locale=identity.locale
            )
            session, resumed = await self._resume_or_open(
                user, frame.session_id, frame.last_seq or 0
            )
        except StoreUnavailable:
            self._direct(ErrorFrame(ErrorCode.UNAVAILABLE, "storage is unavailable; retry hello"))
            return
        if session is None:
            self._refuse(ErrorCode.FORBIDDEN, "that session belongs to someone else")
            return
        self.session = session
        bind_ids(session_id=session.id, user_id=user.id)
        log.info("session resumed" if resumed else "session started")
        self._direct(
            Welcome(
                session_id=session.id,
                user_id=user.id,
                resumed=resumed,
                last_seq=session.last_seq,
            )
        )
        session.attach(self._outbox, (frame.last_seq or 0) if resumed else session.last_seq)

    async def _resume_or_open(
        self, user: UserRecord, session_id: str | None, last_seq: int
    ) -> tuple[ChatSession | None, bool]:
        service = self._service
        if session_id is not None:
            live = service.sessions.get(session_id) or await service.adopt(session_id, user)
            if live is not None:
                return (live, True) if live.user.id == user.id else (None, False)
            stored = await service.store.get_conversation(session_id)
            if stored is not None and stored.user_id != user.id:
                return None, False
            if stored is not None and stored.status != "closed" and stored.channel == "chat":
                return await service.recover(stored, user, last_seq), True
        conversation = await service.store.open_conversation(user.id, "chat")
        session = service.new_session(user, conversation)
        service.sessions[session.id] = session
        return session, False
