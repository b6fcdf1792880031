"""A chat session: its numbered frame stream, its replay buffer and its turn worker.

The session outlives any one WebSocket: a connection attaches an Outbox, a drop detaches
it, and turns in flight keep producing frames into the replay buffer so that a client who
reconnects with `last_seq` gets exactly what it missed.
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
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from assistant.chat.protocol import (
    Ack,
    EmotionLabel,
    ErrorCode,
    ErrorFrame,
    IntentLabel,
    Reply,
    ReplyDelta,
    ServerFrame,
    serialize,
)
from assistant.cluster.messages import SessionSnapshot
from assistant.core.logs import bind_ids
from assistant.core.outbox import Outbox
from assistant.core.wire import CLOSE_NORMAL, CLOSE_TRY_AGAIN
from assistant.replies.generation import GenerationRequest
from assistant.replies.handoff import HandoffState, near_handoff, turn_signal
from assistant.replies.handoff import release as release_handoff
from assistant.replies.handoff import step as step_handoff
from assistant.replies.profile_summary import summarize_profile
from assistant.replies.prompting import ConversationTurn
from assistant.replies.understanding import Understanding
from fusion import (
    FuseResult,
    Observation,
    Observed,
    Overloaded,
    ProfileState,
    TurnInput,
    TurnReading,
    UnderstandingResult,
)
from profiles import (
    ConversationRecord,
    EventRecord,
    NewEvent,
    ProfileRecord,
    ProfileUpdate,
    StoredFrame,
    StoreUnavailable,
    TurnLabels,
    TurnRecord,
    UserRecord,
)

if TYPE_CHECKING:
    from assistant.chat.connection import ChatService

log = logging.getLogger(__name__)

# Earlier turns of the conversation that the reply generator sees.
WINDOW_TURNS = 8


@dataclass(frozen=True, slots=True)
class TurnRead:
    """The models' reading of a message and what they read besides its text."""

    reading: TurnReading
    profile: ProfileRecord | None  # before the message
    events: list[EventRecord | _SeenEvent]
    now: datetime


@dataclass(frozen=True, slots=True)
class PendingTurn:
    turn_id: str
    client_id: str
    text: str
    received: float  # time.perf_counter() when the frame arrived
    record: TurnRecord  # as stored: redacted text
    # A spoken turn, heard: the featurizer's vector (fusion.speech.SpeechFeaturizer) for the
    # fusion model, the recognizer's encoder mean and prosody (fusion.voice_emotion) for the
    # emotion head.
    speech: npt.NDArray[np.float32] | None = None
    voice: npt.NDArray[np.float32] | None = None
    # The models' work on the message when it started as the message arrived.
    reading: asyncio.Future[TurnRead] | None = None
    # Answered again after a restart: the client may have seen some of an earlier answer's
    # deltas, so this one sends only the complete reply.
    recovered: bool = False


@dataclass(slots=True)
class _Unsent:
    """A frame emitted and not sent yet; `ready` once stored (or at once, for a delta or an
    ack)."""

    seq: int
    text: str
    ready: bool


@dataclass(frozen=True, slots=True)
class _SeenEvent:
    """An event this session stored, in the shape of a stored record (without a row id)."""

    user_id: str
    client_id: str
    name: str
    occurred_at: datetime
    props: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PendingBehaviour:
    """New behaviour events to fold into the profile; many event frames share one job."""


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


@dataclass(frozen=True, slots=True)
class OperatorHold:
    """The operator who has taken the session over: the bot does not answer meanwhile."""

    operator_id: str
    name: str


class SessionObserver(Protocol):
    """Told about every live turn and the end of every session (the operator service)."""

    def on_turn(self, session: ChatSession, turn: LiveTurn) -> None: ...

    def on_closed(self, session: ChatSession) -> None: ...


def _state(profile: ProfileRecord | None, model_version: str) -> ProfileState | None:
    # A vector from another fusion model lives in another space: start afresh rather than mix.
    if profile is None or profile.model_version != model_version:
        return None
    contributions = {k: float(v) for k, v in profile.modality_contributions.items()}
    return ProfileState(profile.vector, contributions)


class ChatSession:
    def __init__(
        self,
        service: ChatService,
        user: UserRecord,
        conversation: ConversationRecord,
        *,
        replay_frames: int,
        max_pending_turns: int = 16,
    ) -> None:
        self.id = conversation.id
        self.user = user
        self.conversation = conversation
        self._service = service
        self._seq = 0
        # The last frame the journal has stored, and the frames not sent yet, oldest first.
        self._stored_seq = 0
        self._all_stored = asyncio.Event()
        self._all_stored.set()
        self._unsent: deque[_Unsent] = deque()
        self._replay_frames = replay_frames
        self._log: deque[tuple[int, str]] = deque(maxlen=replay_frames)
        self._outbox: Outbox | None = None
        self._turns: asyncio.Queue[PendingTurn | PendingBehaviour | _Settled] = asyncio.Queue(
            maxsize=max_pending_turns + 1
        )
        self._max_pending_turns = max_pending_turns
        self._new_events = 0
        self._events: dict[str, EventRecord | _SeenEvent] | None = None
        # This conversation's turns, newest last: read once, then kept in memory.
        self._turns_seen: deque[TurnRecord] | None = None
        # The user's profile as this session last read or wrote it (`_profile_known`): the
        # next turn's heads are conditioned on it without a read.
        self._profile: ProfileRecord | None = None
        self._profile_known = False
        self._answering = False
        self._handoff = HandoffState()
        self._worker = asyncio.create_task(self._run_turns(), name=f"turns-{self.id}")
        self.detached_since: float | None = time.monotonic()
        # For operators: who holds the session, whether it asked for one, its latest labels.
        self.held_by: OperatorHold | None = None
        self.waiting_for_operator = False
        self.intent: str | None = None
        self.emotion: str | None = None
        self.last_activity = datetime.now(UTC)
        # Told every frame the session emits: a voice call speaks replies instead of a socket.
        self.listener: Callable[[ServerFrame], None] | None = None

    @property
    def last_seq(self) -> int:
        return self._seq

    @property
    def has_room(self) -> bool:
        return self._turns.qsize() < self._max_pending_turns

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
        service = self._service
        service.journal.append(
            StoredFrame(self.id, unsent.seq, unsent.text), lambda: self._stored(unsent)
        )
        self._send_ready()
        if unsent.seq - self._stored_seq > service.config.send_queue and self._outbox:
            # The database is not keeping up (an outage): stop taking frames from this client.
            self._outbox.close_soon(CLOSE_TRY_AGAIN, "frames are waiting to be stored")
        if isinstance(frame, Reply):
            self._replied(frame)
        elif isinstance(frame, ErrorFrame):
            self._service.metrics.error("/chat", frame.code.value)
        if self.listener is not None:
            self.listener(frame)
        return self._seq

    def _stored(self, unsent: _Unsent) -> None:
        """The journal stored a frame (it stores them in the order they were emitted)."""
        seq = self._stored_seq = unsent.seq
        unsent.ready = True
        self._send_ready()
        if seq == self._seq:
            self._all_stored.set()
        if seq % self._replay_frames == 0:
            self._service.journal.prune(self.id, below=seq - self._replay_frames + 1)

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
        if reply.handoff:
            self.waiting_for_operator = True
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
            )
        )

    def user_turn(self, turn: TurnRecord) -> None:
        """A user turn was stored: tell the operators watching."""
        self._notify(LiveTurn("user", turn.text, turn.id, turn.created_at))

    def _notify(self, turn: LiveTurn) -> None:
        self.last_activity = turn.at
        observer = self._service.observer
        if observer is not None:
            observer.on_turn(self, turn)

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
        self._turns.put_nowait(turn)

    def start_reading(
        self, text: str, speech: npt.NDArray[np.float32] | None = None
    ) -> asyncio.Future[TurnRead] | None:
        """Start the models on a message while it is being stored, when the session holds
        what they read besides the text and no earlier message is still being answered (that
        one's profile update comes first). The caller hands the future to the turn it enqueues,
        or cancels it."""
        if not self._profile_known or self._events is None:
            return None
        if self._answering or not self._turns.empty() or self.held_by is not None:
            return None
        return asyncio.ensure_future(self._read(text, datetime.now(UTC), speech))

    def events_stored(self, count: int) -> None:
        """Fold `count` newly stored events into the profile, after any turn already queued."""
        if count <= 0:
            return
        first = self._new_events == 0
        self._new_events += count
        if first:
            # The queue keeps one slot beyond the turn limit, and only one of these waits.
            self._turns.put_nowait(PendingBehaviour())

    async def settle(self) -> None:
        """Wait until every turn and behaviour update queued so far has been handled."""
        settled = _Settled(asyncio.Event())
        await self._turns.put(settled)
        await settled.reached.wait()
        await self._all_stored.wait()

    async def close(
        self, code: int = CLOSE_NORMAL, reason: str = "session closed", *, ended: bool = True
    ) -> None:
        """Stop the session here; `ended=False` when it moves to another replica."""
        observer = self._service.observer
        if observer is not None and ended:
            observer.on_closed(self)
        self._worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._worker
        while not self._turns.empty():
            job = self._turns.get_nowait()
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
        self.intent = snapshot.intent
        self.emotion = snapshot.emotion

    async def _run_turns(self) -> None:
        bind_ids(session_id=self.id, user_id=self.user.id)
        while True:
            job = await self._turns.get()
            if isinstance(job, _Settled):
                job.reached.set()
                continue
            if self.held_by is not None and isinstance(job, PendingTurn):
                if job.reading is not None:
                    job.reading.cancel()
                continue  # an operator answers this one
            if isinstance(job, PendingBehaviour):
                count, self._new_events = self._new_events, 0
                try:
                    await self._absorb_behaviour(count)
                except (StoreUnavailable, Overloaded) as exc:
                    # The events are stored; the profile catches up with the next update.
                    log.warning("behaviour update skipped: %s", type(exc).__name__)
                except Exception:
                    log.exception("behaviour update failed", extra={"session_id": self.id})
                continue
            self._answering = True
            try:
                await self._answer(job)
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

    async def _recent_events(self) -> list[EventRecord | _SeenEvent]:
        """The user's latest events: read once per session, then kept up to date in memory."""
        limit = self._service.models.config.max_events
        if self._events is None:
            stored = await self._service.store.list_events(self.user.id, limit=limit)
            self._events = {e.client_id: e for e in reversed(stored)}
        return list(self._events.values())[-limit:]

    def remember_events(self, events: Sequence[NewEvent]) -> None:
        """Events this session just stored; a client id seen before is the same event."""
        if self._events is None:
            return
        for event in events:
            seen = _SeenEvent(
                self.user.id, event.client_id, event.name, event.occurred_at, dict(event.props)
            )
            self._events.setdefault(event.client_id, seen)
        limit = self._service.models.config.max_events
        if len(self._events) > limit:
            newest = sorted(self._events.values(), key=lambda e: e.occurred_at)[-limit:]
            self._events = {e.client_id: e for e in newest}

    async def _profile_before(self) -> ProfileRecord | None:
        if not self._profile_known:
            self._profile = await self._service.store.get_profile(self.user.id)
            self._profile_known = True
        return self._profile

    def _saved(self, profile: ProfileRecord | None) -> None:
        if profile is not None:
            self._profile, self._profile_known = profile, True

    async def _read(
        self,
        text: str,
        now: datetime,
        speech: npt.NDArray[np.float32] | None = None,
        voice: npt.NDArray[np.float32] | None = None,
    ) -> TurnRead:
        models = self._service.models
        profile = await self._profile_before()
        events = await self._recent_events()
        # A vector from another fusion model lives in another space: the heads get none.
        usable = profile is not None and profile.model_version == models.model_version
        reading = await models.read_turn(
            TurnInput(
                text, profile.vector if profile and usable else None, events, now, speech, voice
            )
        )
        return TurnRead(reading, profile, events, now)

    async def _observe(self, text: str | None) -> tuple[Observed, datetime]:
        now = datetime.now(UTC)
        events = await self._recent_events()
        observation = Observation(now=now, text=text, events=events)
        return await self._service.models.observe(observation), now

    async def _recent_turns(self) -> list[TurnRecord]:
        if self._turns_seen is None:
            stored = await self._service.store.list_turns(self.id)
            self._turns_seen = deque(stored, maxlen=WINDOW_TURNS)
        return list(self._turns_seen)

    def released(self) -> None:
        """An operator handed the conversation back: the bot answers again."""
        self._handoff = release_handoff(self._handoff)
        self.waiting_for_operator = False

    def _profile_change(
        self, fused: FuseResult, now: datetime, reason: str, *, turns: int = 0, events: int = 0
    ) -> Callable[[ProfileRecord | None], ProfileUpdate]:
        """The profile update as a function of the stored profile, run in its write transaction."""
        models = self._service.models

        def change(profile: ProfileRecord | None) -> ProfileUpdate:
            dt_s = (now - profile.updated_at).total_seconds() if profile else 0.0
            state = models.update_profile(_state(profile, models.model_version), fused, dt_s)
            return ProfileUpdate(
                vector=state.vector,
                model_version=models.model_version,
                reason=reason,
                modality_contributions=state.contributions,
                turns=turns,
                events=events,
            )

        return change

    async def _absorb_behaviour(self, count: int) -> None:
        observed, now = await self._observe(None)
        change = self._profile_change(observed.fused, now, "behaviour", events=count)
        async with self._service.user_lock(self.user.id):
            self._saved(await self._service.store.apply_profile(self.user.id, change))

    async def _answer(self, turn: PendingTurn) -> None:
        service = self._service
        read = await (
            turn.reading or self._read(turn.text, datetime.now(UTC), turn.speech, turn.voice)
        )
        profile, events, now = read.profile, read.events, read.now
        understanding = _understanding(read.reading.understanding)
        observed = Observed(read.reading.text_vector, read.reading.fused)
        history = await self._recent_turns()
        labels = TurnLabels(
            intent=understanding.intent,
            intent_confidence=understanding.confidence,
            emotion=understanding.emotion,
            emotion_scores=dict(understanding.emotion_scores) or None,
        )
        self._handoff, decision = step_handoff(self._handoff, turn_signal(turn.text, understanding))
        change = self._profile_change(observed.fused, now, "turn", turns=1)
        # What the write below will store, unless another session of the user writes first:
        # the next message's models can start on it before the write commits.
        self._profile = _predicted(self.user.id, profile, change(profile), labels, now)
        if not decision.answer:
            # Waiting for an operator: the turn is stored, the profile learns, the bot is quiet.
            async with service.user_lock(self.user.id):
                await service.store.label_turn(turn.turn_id, labels)
                self._saved(await service.store.apply_profile(self.user.id, change))
            self._remember_turn(turn.record)
            return
        request = GenerationRequest(
            user_id=self.user.id,
            utterance=turn.text,
            understanding=understanding,
            profile=summarize_profile(
                self.user.id, profile=profile, events=events, turns=history, now=now
            ),
            window=tuple(ConversationTurn(t.role, t.text) for t in history),
            handoff=decision.handoff,
            near_handoff=near_handoff(self._handoff),
            query_vector=observed.text_vector,
        )
        stream = service.generator.stream(request)
        deltas = _Deltas(lambda text: self.emit(ReplyDelta(turn_id=turn.turn_id, text=text)))
        try:
            async for piece in stream:
                if turn.recovered:
                    continue
                if self.listener is not None:
                    # A voice call synthesizes each sentence as soon as it has it.
                    deltas.flush()
                    self.emit(ReplyDelta(turn_id=turn.turn_id, text=piece))
                else:
                    deltas.add(piece)
        finally:
            deltas.flush()
        text = stream.result.text
        intent = (
            IntentLabel(understanding.intent, understanding.confidence)
            if understanding.intent is not None and understanding.confidence is not None
            else None
        )
        emotion = (
            EmotionLabel(understanding.emotion, dict(understanding.emotion_scores))
            if understanding.emotion is not None
            else None
        )
        # The reply goes out before its transaction: the client's message was durable when
        # acked; what the server writes now (labels, the reply turn, the profile) commits
        # before this session's next turn is answered.
        self.emit(
            Reply(
                turn_id=turn.turn_id,
                text=text,
                intent=intent,
                emotion=emotion,
                handoff=decision.handoff,
            )
        )
        latency_ms = (time.perf_counter() - turn.received) * 1000.0
        service.metrics.turn_answered(latency_ms / 1000.0)
        self._answering = False
        # The reply frame is journaled (and sent) before the turn's rows take the database:
        # the client has its reply one commit sooner. A restart in between finds the stored
        # reply frame and does not answer the message again (assistant/chat/recovery.py).
        await self._all_stored.wait()
        # Turns of one user in several sessions of this process take turns on the profile row.
        async with service.user_lock(self.user.id):
            finished = await service.store.finish_turn(
                turn.turn_id,
                labels=labels,
                reply_text=text,
                latency_ms=latency_ms,
                profile=change,
            )
        self._saved(finished.profile)
        self._remember_turn(turn.record)
        self._remember_turn(finished.reply)

    def _remember_turn(self, turn: TurnRecord) -> None:
        if self._turns_seen is not None:
            self._turns_seen.append(turn)


class _Deltas:
    """A reply's pieces that arrive in the same pass of the event loop go out as one delta.

    The composer writes a whole reply at once, and each frame costs a journal row, a send
    and a wake-up of the client; a chat model's pieces, which come over time, still go out
    as they come (one pass of the loop later).
    """

    def __init__(self, send: Callable[[str], object]) -> None:
        self._send = send
        self._pieces: list[str] = []
        self._flush: asyncio.Handle | None = None

    def add(self, piece: str) -> None:
        self._pieces.append(piece)
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        if self._pieces:
            text = "".join(self._pieces)
            self._pieces.clear()
            self._send(text)


def _understanding(result: UnderstandingResult) -> Understanding:
    return Understanding(
        intent=result.intent,
        confidence=result.intent_confidence,
        top2=(result.top2[0], result.top2[1]) if len(result.top2) == 2 else None,
        emotion=result.emotion,
        emotion_scores=result.emotion_scores,
    )


def _predicted(
    user_id: str,
    before: ProfileRecord | None,
    update: ProfileUpdate,
    labels: TurnLabels,
    now: datetime,
) -> ProfileRecord:
    """The profile `Store.finish_turn` writes for `update` over `before`, computed here."""
    histogram = dict(before.intent_histogram) if before else {}
    if labels.intent is not None:
        histogram[labels.intent] = int(histogram.get(labels.intent, 0)) + 1
    return ProfileRecord(
        user_id=user_id,
        vector=update.vector,
        model_version=update.model_version,
        turn_count=(before.turn_count if before else 0) + update.turns,
        event_count=(before.event_count if before else 0) + update.events,
        emotion_state=before.emotion_state if before else None,
        intent_histogram=histogram,
        modality_contributions=dict(update.modality_contributions),
        updated_at=now,
    )
