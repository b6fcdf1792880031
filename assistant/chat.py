"""The /chat route's logic: one ChatConnection per WebSocket, sessions owned by ChatService."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
import weakref
from dataclasses import dataclass

from assistant.generation import ResponseGenerator
from assistant.outbox import CLOSE_POLICY, Outbox, Transport
from assistant.protocol import (
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
    Ping,
    Pong,
    ProtocolError,
    ServerFrame,
    Welcome,
    parse_client_frame,
    serialize,
)
from assistant.redaction import redact
from assistant.session import ChatSession, PendingTurn, SessionObserver
from assistant.tokens import Claims, verify_token
from fusion import FusionRuntime
from profiles import NewEvent, NotFound, Store, StoreUnavailable, UserRecord

log = logging.getLogger(__name__)

ANONYMOUS_TENANT = "default"


@dataclass(frozen=True, slots=True)
class ChatConfig:
    widget_secret: str | None = None
    resume_ttl_s: float = 300.0
    replay_frames: int = 2000
    send_queue: int = 1000


@dataclass(frozen=True, slots=True)
class _Identity:
    tenant: str
    external_id: str
    name: str | None
    locale: str | None


class ChatService:
    """Owns every live chat session and the task that expires abandoned ones."""

    def __init__(
        self,
        store: Store,
        models: FusionRuntime,
        config: ChatConfig,
        generator: ResponseGenerator | None = None,
    ) -> None:
        self.store = store
        self.models = models
        self.config = config
        self._generator = generator
        self.sessions: dict[str, ChatSession] = {}
        self.observer: SessionObserver | None = None
        self._user_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        self._reaper: asyncio.Task[None] | None = None

    @property
    def has_generator(self) -> bool:
        return self._generator is not None

    @property
    def generator(self) -> ResponseGenerator:
        if self._generator is None:
            raise RuntimeError("ChatService has no response generator yet")
        return self._generator

    @generator.setter
    def generator(self, generator: ResponseGenerator) -> None:
        self._generator = generator

    def start(self) -> None:
        self._reaper = asyncio.create_task(self._reap(), name="session-reaper")

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        sessions, self.sessions = list(self.sessions.values()), {}
        for session in sessions:
            await session.close()

    def user_lock(self, user_id: str) -> asyncio.Lock:
        """Serialises profile read-modify-write for one user across that user's sessions."""
        lock = self._user_locks.get(user_id)
        if lock is None:
            lock = asyncio.Lock()
            self._user_locks[user_id] = lock
        return lock

    def connection(self, transport: Transport) -> ChatConnection:
        return ChatConnection(self, transport)

    async def _reap(self) -> None:
        interval = max(0.05, min(30.0, self.config.resume_ttl_s / 4))
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            expired = [
                s
                for s in self.sessions.values()
                if s.detached_since is not None
                and now - s.detached_since > self.config.resume_ttl_s
            ]
            for session in expired:
                self.sessions.pop(session.id, None)
                await session.close()
                with contextlib.suppress(StoreUnavailable):
                    await self.store.set_conversation_status(session.id, "closed")


class ChatConnection:
    """One WebSocket on /chat. server.py feeds it frames; it never raises on client input."""

    def __init__(self, service: ChatService, transport: Transport) -> None:
        self._service = service
        self._outbox = Outbox(transport, service.config.send_queue)
        self._outbox.start()
        self.session: ChatSession | None = None

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
        if isinstance(frame, Hello):
            await self._hello(frame)
            return
        if isinstance(frame, Ping):
            self._direct(Pong(id=frame.id))
            return
        if self.session is None:
            ref = getattr(frame, "id", None)
            self._direct(ErrorFrame(ErrorCode.HELLO_REQUIRED, "send 'hello' first", ref))
            return
        try:
            await self._dispatch(self.session, frame, received)
        except StoreUnavailable:
            ref = getattr(frame, "id", None)
            self.session.emit(ErrorFrame(ErrorCode.UNAVAILABLE, "storage is unavailable", ref))
        except NotFound:
            # The session's user was erased while this connection was closing.
            log.info("frame for an erased session dropped", extra={"session_id": self.session.id})

    async def closed(self) -> None:
        if self.session is not None:
            self.session.detach(self._outbox)
        await self._outbox.stop()

    # frames

    def _direct(self, frame: ServerFrame) -> None:
        """A connection-scoped frame: seq 0, not part of the session's replayable stream."""
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
            session.emit(
                ErrorFrame(
                    ErrorCode.NOT_SUPPORTED,
                    "voice notes are not accepted on this server yet",
                    frame.id,
                )
            )

    async def _message(self, session: ChatSession, frame: Message, received: float) -> None:
        if not session.has_room:
            session.emit(
                ErrorFrame(ErrorCode.OVERLOADED, "too many messages waiting for replies", frame.id)
            )
            return
        store = self._service.store
        turn, created = await store.add_user_turn(
            session.id, session.user.id, frame.id, redact(frame.text)
        )
        session.emit(Ack(id=frame.id))
        if created:
            session.user_turn(turn)
            if session.held_by is None:
                session.enqueue(PendingTurn(turn.id, frame.id, frame.text, received, turn))

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

    def _identify(self, frame: Hello) -> _Identity | ProtocolError:
        secret = self._service.config.widget_secret
        if secret is not None:
            if frame.token is None:
                return ProtocolError(ErrorCode.UNAUTHORIZED, "a signed widget token is required")
            claims = verify_token(secret, frame.token)
            if not isinstance(claims, Claims):
                return ProtocolError(ErrorCode.UNAUTHORIZED, f"token refused: {claims.value}")
            user = frame.user
            return _Identity(
                tenant=claims.tenant,
                external_id=claims.external_id,
                name=claims.name or (user.name if user else None),
                locale=user.locale if user else None,
            )
        if frame.user is not None:
            return _Identity(
                ANONYMOUS_TENANT, frame.user.external_id, frame.user.name, frame.user.locale
            )
        return _Identity(ANONYMOUS_TENANT, f"anon-{uuid.uuid4().hex}", None, None)

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
            session, resumed = await self._resume_or_open(user, frame.session_id)
        except StoreUnavailable:
            self._direct(ErrorFrame(ErrorCode.UNAVAILABLE, "storage is unavailable; retry hello"))
            return
        if session is None:
            self._refuse(ErrorCode.FORBIDDEN, "that session belongs to someone else")
            return
        self.session = session
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
        self, user: UserRecord, session_id: str | None
    ) -> tuple[ChatSession | None, bool]:
        service = self._service
        if session_id is not None:
            live = service.sessions.get(session_id)
            if live is not None:
                return (live, True) if live.user.id == user.id else (None, False)
            stored = await service.store.get_conversation(session_id)
            if stored is not None and stored.user_id != user.id:
                return None, False
        conversation = await service.store.open_conversation(user.id, "chat")
        session = ChatSession(
            service, user, conversation, replay_frames=service.config.replay_frames
        )
        service.sessions[session.id] = session
        return session, False
