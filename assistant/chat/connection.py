"""The /chat route's logic: one ChatConnection per WebSocket, sessions owned by ChatService."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
import weakref
from dataclasses import dataclass

from assistant.chat.journal import FrameJournal
from assistant.chat.protocol import (
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
from assistant.chat.rate_limits import RateLimiter, RateLimits
from assistant.chat.recovery import unanswered
from assistant.chat.session import ChatSession, PendingTurn, SessionObserver
from assistant.chat.widget_tokens import Claims, verify_token
from assistant.cluster.replicas import Cluster
from assistant.core.logs import bind_ids
from assistant.core.metrics import Metrics
from assistant.core.outbox import Outbox, Transport
from assistant.core.redaction import redact
from assistant.core.wire import CLOSE_NORMAL, CLOSE_POLICY, CLOSE_SERVICE_RESTART
from assistant.replies.generation import ResponseGenerator
from fusion import FusionRuntime
from profiles import (
    ConversationRecord,
    NewEvent,
    NotFound,
    Store,
    StoreUnavailable,
    UserRecord,
)

log = logging.getLogger(__name__)

ANONYMOUS_TENANT = "default"


@dataclass(frozen=True, slots=True)
class ChatConfig:
    widget_secret: str | None = None
    resume_ttl_s: float = 300.0
    replay_frames: int = 2000
    send_queue: int = 1000
    # How long a replica handing a session to another waits for its turn in flight.
    handover_timeout_s: float = 10.0


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
        *,
        cluster: Cluster | None = None,
        limiter: RateLimiter | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.models = models
        self.config = config
        self._generator = generator
        self.cluster = cluster or Cluster.single()
        self.limiter = limiter or RateLimiter(RateLimits())
        self.metrics = metrics or Metrics()
        # Set by `drain`: no new work is taken, sessions are being parked for other replicas.
        self.draining = False
        self.sessions: dict[str, ChatSession] = {}
        self.journal = FrameJournal(store)
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
        self.journal.start()
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
        await self.journal.stop()

    async def recover(
        self, conversation: ConversationRecord, user: UserRecord, last_seq: int
    ) -> ChatSession:
        """Continue here a session of `user` that no replica holds (the server was restarted
        or killed): its stream from the frame journal, its waiting messages answered."""
        frames = await self.store.list_frames(conversation.id, limit=self.config.replay_frames)
        turns = await self.store.list_turns(conversation.id)
        if conversation.status == "operator":
            # The operator's connection did not survive the restart either.
            await self.store.set_conversation_status(conversation.id, "bot")
        live = self.sessions.get(conversation.id)
        if live is not None:
            return live  # another hello recovered it meanwhile
        session = ChatSession(self, user, conversation, replay_frames=self.config.replay_frames)
        session.resume_from(frames, last_seq)
        for turn in unanswered(turns, frames):
            if turn.client_id is None or not session.has_room:
                break  # more than a session holds cannot have been waiting
            pending = PendingTurn(
                turn.id, turn.client_id, turn.text, time.perf_counter(), turn, recovered=True
            )
            session.enqueue(pending)
        self.sessions[session.id] = session
        log.info("session recovered", extra={"session_id": session.id, "frames": len(frames)})
        return session

    def user_lock(self, user_id: str) -> asyncio.Lock:
        """Serialises profile read-modify-write for one user across that user's sessions."""
        lock = self._user_locks.get(user_id)
        if lock is None:
            lock = asyncio.Lock()
            self._user_locks[user_id] = lock
        return lock

    def connection(self, transport: Transport) -> ChatConnection:
        return ChatConnection(self, transport)

    async def drain(self, timeout_s: float) -> None:
        """Take no new work, let queued turns finish (for at most `timeout_s`), then park
        every session for another replica and close its connection with 1012."""
        self.draining = True
        # They stay listed (presence, operators' commands) until parked.
        sessions = list(self.sessions.values())
        if sessions:
            settling = [asyncio.create_task(s.settle()) for s in sessions]
            _, unfinished = await asyncio.wait(settling, timeout=timeout_s)
            for task in unfinished:
                task.cancel()
            if unfinished:
                log.warning(
                    "drain timed out with turns still running",
                    extra={"count": len(unfinished)},
                )
        self.sessions = {}
        # A voice call cannot move: its telephony stream ends with the connection.
        chats = [s for s in sessions if s.conversation.channel == "chat"]
        parked = await self.cluster.park([s.snapshot() for s in chats])
        if parked:
            log.info("drained: sessions parked for other replicas", extra={"count": len(chats)})
        else:
            log.warning(
                "sessions not parked (no Redis): they resume from their stored frames",
                extra={"count": len(chats)},
            )
        for session in sessions:
            await session.close(CLOSE_SERVICE_RESTART, "service restart", ended=False)
        await self.cluster.leave()

    async def hand_off(self, session_id: str, user_id: str) -> bool | None:
        """Park a session held here for the replica its client reconnected to.

        None: not held here; False: it belongs to another user; True: parked.
        """
        session = self.sessions.get(session_id)
        if session is None:
            return None
        if session.user.id != user_id:
            return False
        del self.sessions[session_id]
        try:
            async with asyncio.timeout(self.config.handover_timeout_s):
                await session.settle()
        except TimeoutError:
            log.warning(
                "handover before the turn in flight finished", extra={"session_id": session_id}
            )
        parked = await self.cluster.park([session.snapshot()])
        await session.close(CLOSE_NORMAL, "session resumed on another connection", ended=False)
        self.cluster.presence_changed()
        log.info("session handed over to another replica", extra={"session_id": session_id})
        return parked

    async def adopt(self, session_id: str, user: UserRecord) -> ChatSession | None:
        """Continue here a session of `user` that another replica holds or has parked."""
        cluster = self.cluster
        if not cluster.up:
            return None
        located = await cluster.locate(session_id)
        if located is not None:
            replica, summary = located
            if summary.get("user_id") != user.id:
                return None
            call = cluster.new_call("handover", session_id=session_id, user_id=user.id)
            # Whatever the answer, the session is parked now or was lost with its replica.
            await cluster.call(replica, call, self.config.handover_timeout_s + 5.0)
        snapshot = await cluster.unpark(session_id, user.id)
        if snapshot is None:
            return None
        conversation = await self.store.get_conversation(session_id)
        if conversation is None or conversation.user_id != user.id:
            return None
        session = ChatSession(self, user, conversation, replay_frames=self.config.replay_frames)
        session.restore(snapshot)
        self.sessions[session.id] = session
        cluster.presence_changed()
        return session

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
        service = self._service
        if not await service.limiter.allow_message(self._id, session.user.id):
            session.emit(
                ErrorFrame(
                    ErrorCode.RATE_LIMITED,
                    "too many messages: send it again in a few seconds",
                    frame.id,
                )
            )
            return
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
        session.emit(Ack(id=frame.id))
        if created:
            service.metrics.message_stored()
            session.user_turn(turn)
        if created and session.held_by is None:
            session.enqueue(
                PendingTurn(turn.id, frame.id, frame.text, received, turn, reading=reading)
            )
        elif reading is not None:
            reading.cancel()

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
        session = ChatSession(
            service, user, conversation, replay_frames=service.config.replay_frames
        )
        service.sessions[session.id] = session
        return session, False
