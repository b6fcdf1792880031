"""The /chat route's shared state: every live session, owned by ChatService.

The service opens, recovers (after a restart), hands over and adopts (between replicas),
drains and expires sessions; one ChatConnection per WebSocket (assistant/chat/connection.py)
attaches to one of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from dataclasses import dataclass, field

from assistant.chat.journal import FrameJournal
from assistant.chat.rate_limits import RateLimiter, RateLimits
from assistant.chat.recovery import unanswered
from assistant.chat.session import ChatSession, SessionObserver
from assistant.chat.turns import PendingTurn, TurnPipeline
from assistant.chat.voice_notes import NoteHearing
from assistant.cluster.replicas import Cluster
from assistant.core.metrics import Metrics
from assistant.core.wire import CLOSE_NORMAL, CLOSE_SERVICE_RESTART
from assistant.replies.dialogue import DialogueConfig
from assistant.replies.generation import ResponseGenerator
from fusion import FusionRuntime
from profiles import ConversationRecord, Store, StoreUnavailable, UserRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ChatConfig:
    widget_secret: str | None = None
    resume_ttl_s: float = 300.0
    replay_frames: int = 2000
    send_queue: int = 1000
    # How long a replica handing a session to another waits for its turn in flight.
    handover_timeout_s: float = 10.0
    dialogue: DialogueConfig = field(default_factory=DialogueConfig)
    # A voice note whose next part has not come for this long is dropped, never stored.
    note_timeout_s: float = 120.0


class ChatService:
    """Owns every live chat session, the turn pipeline they share, and the task that expires
    abandoned sessions."""

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
        self.config = config
        self.cluster = cluster or Cluster.single()
        self.limiter = limiter or RateLimiter(RateLimits())
        self.metrics = metrics or Metrics()
        # Set by `drain`: no new work is taken, sessions are being parked for other replicas.
        self.draining = False
        self.sessions: dict[str, ChatSession] = {}
        self.journal = FrameJournal(store)
        self.observer: SessionObserver | None = None
        # What hears voice notes (the voice room's speech models, set by the runtime); None:
        # this server takes none.
        self.hearing: NoteHearing | None = None
        self._user_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        self.turns = TurnPipeline(
            models, store, self.metrics, self.user_lock, generator, dialogue=config.dialogue
        )
        self._reaper: asyncio.Task[None] | None = None

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

    def new_session(
        self, user: UserRecord, conversation: ConversationRecord, replay_frames: int | None = None
    ) -> ChatSession:
        """A session of this service for `conversation`; the caller lists it in `sessions`."""
        return ChatSession(
            user,
            conversation,
            turns=self.turns,
            journal=self.journal,
            metrics=self.metrics,
            observer=self.observer,
            replay_frames=self.config.replay_frames if replay_frames is None else replay_frames,
            send_queue=self.config.send_queue,
        )

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
        session = self.new_session(user, conversation)
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
        session = self.new_session(user, conversation)
        session.restore(snapshot)
        self.sessions[session.id] = session
        cluster.presence_changed()
        return session

    async def _reap(self) -> None:
        interval = max(0.05, min(30.0, self.config.resume_ttl_s / 4))
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for live in self.sessions.values():
                live.notes.expire(now - self.config.note_timeout_s)
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
