"""A chat session: its numbered frame stream, its replay buffer and the queue of its turns.

The session outlives any one WebSocket: a connection attaches an Outbox, a drop detaches
it, and turns in flight keep producing frames into the replay buffer so that a client who
reconnects with `last_seq` gets exactly what it missed. Its turns and behaviour updates are
answered one at a time, in order, by a task of its own that hands each to the turn pipeline
(assistant/chat/turns.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import numpy as np
import numpy.typing as npt

from assistant.chat.journal import FrameJournal
from assistant.chat.protocol import (
    Ack,
    ErrorCode,
    ErrorFrame,
    Reply,
    ReplyDelta,
    ServerFrame,
    serialize,
)
from assistant.chat.turns import PendingBehaviour, PendingTurn, TurnMemory, TurnPipeline, TurnRead
from assistant.chat.voice_notes import VoiceNotes
from assistant.cluster.messages import SessionSnapshot
from assistant.core.logs import bind_ids
from assistant.core.metrics import Metrics
from assistant.core.outbox import Outbox
from assistant.core.wire import CLOSE_NORMAL, CLOSE_TRY_AGAIN
from fusion import Overloaded
from profiles import (
    ConversationRecord,
    NewEvent,
    StoredFrame,
    StoreUnavailable,
    TurnRecord,
    UserRecord,
)

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Unsent:
    """A frame emitted and not sent yet; `ready` once stored (or at once, for a delta or an
    ack)."""

    seq: int
    text: str
    ready: bool


@dataclass(frozen=True, slots=True)
class _Settled:
    """Set by the turn worker once every job queued before it has been handled."""

    reached: asyncio.Event


@dataclass(frozen=True, slots=True)
class LiveTurn:
    """A turn as operators watching the session see it, when it happens."""

    role: str  # user | assistant | operator
    text: str
    turn_id: str | None  # the user turn's id; for an assistant reply, the turn it answers
    at: datetime
    intent: str | None = None
    emotion: str | None = None
    # An assistant reply's reading of the message it answers, and a clarification's choices
    # (the reply frame's `turn` and `suggestions`).
    reading: str | None = None
    suggestions: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class OperatorHold:
    """The operator who has taken the session over: the bot does not answer meanwhile."""

    operator_id: str
    name: str


class SessionObserver(Protocol):
    """Told about every live turn and the end of every session (the operator service)."""

    def on_turn(self, session: ChatSession, turn: LiveTurn) -> None: ...

    def on_closed(self, session: ChatSession) -> None: ...

    async def operators_online(self) -> bool:
        """Whether an operator who could take a session over is signed in on any replica."""
        ...


class ChatSession:
    def __init__(
        self,
        user: UserRecord,
        conversation: ConversationRecord,
        *,
        turns: TurnPipeline,
        journal: FrameJournal,
        metrics: Metrics,
        observer: SessionObserver | None,
        replay_frames: int,
        send_queue: int,
        max_pending_turns: int = 16,
    ) -> None:
        self.id = conversation.id
        self.user = user
        self.conversation = conversation
        self._pipeline = turns
        self._memory = TurnMemory(user.id, conversation.id, conversation.channel)
        self._journal = journal
        self._metrics = metrics
        self._observer = observer
        self._send_queue = send_queue
        self._seq = 0
        # The last frame the journal has stored, and the frames not sent yet, oldest first.
        self._stored_seq = 0
        self._all_stored = asyncio.Event()
        self._all_stored.set()
        self._unsent: deque[_Unsent] = deque()
        self._replay_frames = replay_frames
        self._log: deque[tuple[int, str]] = deque(maxlen=replay_frames)
        self._outbox: Outbox | None = None
        self._jobs: asyncio.Queue[PendingTurn | PendingBehaviour | _Settled] = asyncio.Queue(
            maxsize=max_pending_turns + 1
        )
        self._max_pending_turns = max_pending_turns
        self._new_events = 0
        # From the start of a turn's answer until its reply is out.
        self._answering = False
        self._worker = asyncio.create_task(self._run_jobs(), name=f"turns-{self.id}")
        self.detached_since: float | None = time.monotonic()
        # For operators: who holds the session, whether it asked for one, its latest labels.
        self.held_by: OperatorHold | None = None
        self.waiting_for_operator = False
        self.intent: str | None = None
        self.emotion: str | None = None
        self.last_activity = datetime.now(UTC)
        # Told every frame the session emits: a voice call speaks replies instead of a socket.
        self.listener: Callable[[ServerFrame], None] | None = None
        # Voice notes being received: held here, so that a reconnect finds the parts it sent.
        self.notes = VoiceNotes()

    @property
    def last_seq(self) -> int:
        return self._seq

    @property
    def has_room(self) -> bool:
        return self._jobs.qsize() < self._max_pending_turns

    def emit(self, frame: ServerFrame) -> int:
        """Number the frame and journal it; it is kept for replay and sent in order once
        stored, so that a restart never loses a frame a client has seen. A reply delta may
        go before it is stored (a restart that loses it answers that turn again in full), and
        so may an ack: the message it acknowledges is committed already, and a client that
        misses an ack resends the message, which the server acks again."""
        self._seq += 1
        unsent = _Unsent(
            self._seq, serialize(frame, self._seq), isinstance(frame, ReplyDelta | Ack)
        )
        self._unsent.append(unsent)
        self._all_stored.clear()
        self._journal.append(
            StoredFrame(self.id, unsent.seq, unsent.text), lambda: self._stored(unsent)
        )
        self._send_ready()
        if unsent.seq - self._stored_seq > self._send_queue and self._outbox:
            # The database is not keeping up (an outage): stop taking frames from this client.
            self._outbox.close_soon(CLOSE_TRY_AGAIN, "frames are waiting to be stored")
        if isinstance(frame, Reply):
            self._replied(frame)
        elif isinstance(frame, ErrorFrame):
            self._metrics.error("/chat", frame.code.value)
        if self.listener is not None:
            self.listener(frame)
        return self._seq

    async def wait_stored(self) -> None:
        """Until every frame emitted so far is stored."""
        await self._all_stored.wait()

    async def operators_online(self) -> bool:
        return self._observer is not None and await self._observer.operators_online()

    def _stored(self, unsent: _Unsent) -> None:
        """The journal stored a frame (it stores them in the order they were emitted)."""
        seq = self._stored_seq = unsent.seq
        unsent.ready = True
        self._send_ready()
        if seq == self._seq:
            self._all_stored.set()
        if seq % self._replay_frames == 0:
            self._journal.prune(self.id, below=seq - self._replay_frames + 1)

    def _send_ready(self) -> None:
        while self._unsent and self._unsent[0].ready:
            unsent = self._unsent.popleft()
            self._log.append((unsent.seq, unsent.text))
            if self._outbox is not None:
                self._outbox.put(unsent.text)

    def resume_from(self, frames: Sequence[StoredFrame], last_seq: int) -> None:
        """Continue, after a restart, the stream the journal kept: same numbering, same log.

        The client may have seen reply deltas that were not stored (`last_seq` beyond the
        journal): numbering goes on after them, so it sees no number twice.
        """
        self._log.extend((f.seq, f.body) for f in frames)
        self._seq = self._stored_seq = max(frames[-1].seq if frames else 0, last_seq)

    def _replied(self, reply: Reply) -> None:
        # The next message's models may start now: the profile they read is predicted.
        self._answering = False
        # A reply after a handoff says the conversation still waits, unless the customer went
        # back to the bot (assistant.replies.waiting).
        self.waiting_for_operator = reply.handoff and self.held_by is None
        if reply.intent is not None:
            self.intent = reply.intent.label
        if reply.emotion is not None:
            self.emotion = reply.emotion.label
        self._notify(
            LiveTurn(
                "assistant",
                reply.text,
                reply.turn_id,
                datetime.now(UTC),
                self.intent if reply.intent else None,
                self.emotion if reply.emotion else None,
                reply.turn,
                reply.suggestions,
            )
        )

    def user_turn(self, turn: TurnRecord) -> None:
        """A user turn was stored: tell the operators watching."""
        self._notify(LiveTurn("user", turn.text, turn.id, turn.created_at))

    def _notify(self, turn: LiveTurn) -> None:
        self.last_activity = turn.at
        if self._observer is not None:
            self._observer.on_turn(self, turn)

    def attach(self, outbox: Outbox, last_seq: int) -> None:
        """Make `outbox` the session's connection and send it every frame after `last_seq`."""
        previous, self._outbox = self._outbox, outbox
        if previous is not None and previous is not outbox:
            previous.close_soon(CLOSE_NORMAL, "session resumed on another connection")
        self.detached_since = None
        for seq, text in self._log:
            if seq > last_seq:
                outbox.put(text)

    def detach(self, outbox: Outbox) -> None:
        if self._outbox is outbox:
            self._outbox = None
            self.detached_since = time.monotonic()

    def enqueue(self, turn: PendingTurn) -> None:
        self._jobs.put_nowait(turn)

    def start_reading(
        self, text: str, speech: npt.NDArray[np.float32] | None = None
    ) -> asyncio.Future[TurnRead] | None:
        """Start the models on a message while it is being stored, when the session holds
        what they read besides the text and no earlier message is still being answered (that
        one's profile update comes first). The caller hands the future to the turn it enqueues,
        or cancels it."""
        if not self._memory.read_before:
            return None
        if self._answering or not self._jobs.empty() or self.held_by is not None:
            return None
        return asyncio.ensure_future(
            self._pipeline.read(self._memory, text, datetime.now(UTC), speech)
        )

    def remember_events(self, events: Sequence[NewEvent]) -> None:
        """Events this session just stored; a client id seen before is the same event."""
        self._pipeline.remember_events(self._memory, events)

    def events_stored(self, count: int) -> None:
        """Fold `count` newly stored events into the profile, after any turn already queued."""
        if count <= 0:
            return
        first = self._new_events == 0
        self._new_events += count
        if first:
            # The queue keeps one slot beyond the turn limit, and only one of these waits.
            self._jobs.put_nowait(PendingBehaviour())

    def released(self) -> None:
        """An operator handed the conversation back: the bot answers again."""
        self._memory.released()
        self.waiting_for_operator = False

    async def settle(self) -> None:
        """Wait until every turn and behaviour update queued so far has been handled."""
        settled = _Settled(asyncio.Event())
        await self._jobs.put(settled)
        await settled.reached.wait()
        await self._all_stored.wait()

    async def close(
        self, code: int = CLOSE_NORMAL, reason: str = "session closed", *, ended: bool = True
    ) -> None:
        """Stop the session here; `ended=False` when it moves to another replica."""
        if self._observer is not None and ended:
            self._observer.on_closed(self)
        self._worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._worker
        while not self._jobs.empty():
            job = self._jobs.get_nowait()
            if isinstance(job, PendingTurn) and job.reading is not None:
                job.reading.cancel()
        if self._outbox is not None:
            self._outbox.close_soon(code, reason)
            self._outbox = None

    def snapshot(self) -> SessionSnapshot:
        """What another replica needs to continue the session (after `settle`)."""
        holder = self.held_by
        return SessionSnapshot(
            session_id=self.id,
            user_id=self.user.id,
            # Frames not stored yet were never sent: the next replica numbers from here.
            seq=self._stored_seq,
            frames=tuple(self._log),
            operator_id=holder.operator_id if holder else None,
            operator_name=holder.name if holder else None,
            waiting=self.waiting_for_operator,
            intent=self.intent,
            emotion=self.emotion,
        )

    def restore(self, snapshot: SessionSnapshot) -> None:
        """Continue a session parked by another replica: same numbering, same replay log."""
        self._seq = self._stored_seq = snapshot.seq
        self._log.extend(snapshot.frames)
        if snapshot.operator_id is not None:
            self.held_by = OperatorHold(snapshot.operator_id, snapshot.operator_name or "")
        self.waiting_for_operator = snapshot.waiting
        if snapshot.waiting:
            self._memory.waits()
        self.intent = snapshot.intent
        self.emotion = snapshot.emotion

    async def _run_jobs(self) -> None:
        bind_ids(session_id=self.id, user_id=self.user.id)
        while True:
            job = await self._jobs.get()
            if isinstance(job, _Settled):
                job.reached.set()
                continue
            if self.held_by is not None and isinstance(job, PendingTurn):
                if job.reading is not None:
                    job.reading.cancel()
                # Acked for the bot, then a person took over before the bot began: the
                # operator saw it live and answers it, and the customer is told so.
                if self._memory.channel == "chat":
                    self.emit(Ack(id=job.client_id, delivered_to="operator"))
                continue
            if isinstance(job, PendingBehaviour):
                count, self._new_events = self._new_events, 0
                try:
                    await self._pipeline.absorb_behaviour(self._memory, count)
                except (StoreUnavailable, Overloaded) as exc:
                    # The events are stored; the profile catches up with the next update.
                    log.warning("behaviour update skipped: %s", type(exc).__name__)
                except Exception:
                    log.exception("behaviour update failed", extra={"session_id": self.id})
                continue
            self._answering = True
            try:
                await self._pipeline.answer(self._memory, job, self)
            except StoreUnavailable:
                self.emit(
                    ErrorFrame(ErrorCode.UNAVAILABLE, "storage is unavailable", job.client_id)
                )
            except Overloaded:
                self.emit(ErrorFrame(ErrorCode.OVERLOADED, "models are overloaded", job.client_id))
            except Exception:
                log.exception("turn failed", extra={"session_id": self.id})
                self.emit(ErrorFrame(ErrorCode.INTERNAL, "the turn failed", job.client_id))
            finally:
                self._answering = False
