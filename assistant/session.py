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

from assistant.generation import GenerationRequest
from assistant.handoff import HandoffState, near_handoff, turn_signal
from assistant.handoff import release as release_handoff
from assistant.handoff import step as step_handoff
from assistant.outbox import CLOSE_NORMAL, Outbox
from assistant.profile_summary import summarize_profile
from assistant.prompting import ConversationTurn
from assistant.protocol import (
    EmotionLabel,
    ErrorCode,
    ErrorFrame,
    IntentLabel,
    Reply,
    ReplyDelta,
    ServerFrame,
    serialize,
)
from assistant.understanding import Understanding
from fusion import FuseResult, Observation, Observed, Overloaded, ProfileState
from profiles import (
    ConversationRecord,
    EventRecord,
    NewEvent,
    ProfileRecord,
    ProfileUpdate,
    StoreUnavailable,
    TurnLabels,
    TurnRecord,
    UserRecord,
)

if TYPE_CHECKING:
    from assistant.chat import ChatService

log = logging.getLogger(__name__)

# Earlier turns of the conversation that the reply generator sees.
WINDOW_TURNS = 8


@dataclass(frozen=True, slots=True)
class PendingTurn:
    turn_id: str
    client_id: str
    text: str
    received: float  # time.perf_counter() when the frame arrived
    record: TurnRecord  # as stored: redacted text


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
        self._log: deque[tuple[int, str]] = deque(maxlen=replay_frames)
        self._outbox: Outbox | None = None
        self._turns: asyncio.Queue[PendingTurn | PendingBehaviour] = asyncio.Queue(
            maxsize=max_pending_turns + 1
        )
        self._max_pending_turns = max_pending_turns
        self._new_events = 0
        self._events: dict[str, EventRecord | _SeenEvent] | None = None
        # This conversation's turns, newest last: read once, then kept in memory.
        self._turns_seen: deque[TurnRecord] | None = None
        self._handoff = HandoffState()
        self._worker = asyncio.create_task(self._run_turns(), name=f"turns-{self.id}")
        self.detached_since: float | None = time.monotonic()
        # For operators: who holds the session, whether it asked for one, its latest labels.
        self.held_by: OperatorHold | None = None
        self.waiting_for_operator = False
        self.intent: str | None = None
        self.emotion: str | None = None
        self.last_activity = datetime.now(UTC)

    @property
    def last_seq(self) -> int:
        return self._seq

    @property
    def has_room(self) -> bool:
        return self._turns.qsize() < self._max_pending_turns

    def emit(self, frame: ServerFrame) -> int:
        """Number the frame, keep it for replay and send it if a client is attached."""
        self._seq += 1
        text = serialize(frame, self._seq)
        self._log.append((self._seq, text))
        if self._outbox is not None:
            self._outbox.put(text)
        if isinstance(frame, Reply):
            self._replied(frame)
        return self._seq

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

    def events_stored(self, count: int) -> None:
        """Fold `count` newly stored events into the profile, after any turn already queued."""
        if count <= 0:
            return
        first = self._new_events == 0
        self._new_events += count
        if first:
            # The queue keeps one slot beyond the turn limit, and only one of these waits.
            self._turns.put_nowait(PendingBehaviour())

    async def close(self) -> None:
        observer = self._service.observer
        if observer is not None:
            observer.on_closed(self)
        self._worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._worker
        if self._outbox is not None:
            self._outbox.close_soon(CLOSE_NORMAL, "session closed")
            self._outbox = None

    async def _run_turns(self) -> None:
        while True:
            job = await self._turns.get()
            if self.held_by is not None and isinstance(job, PendingTurn):
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
            await self._service.store.apply_profile(self.user.id, change)

    async def _answer(self, turn: PendingTurn) -> None:
        service = self._service
        models = service.models
        now = datetime.now(UTC)
        # The profile read overlaps the encoder; fusion and the understanding heads then run
        # side by side in their own batcher threads.
        profile_read = asyncio.ensure_future(service.store.get_profile(self.user.id))
        try:
            text_vector = await models.encode_text(turn.text)
        finally:
            profile = await profile_read
        events = await self._recent_events()
        fused, understanding = await asyncio.gather(
            models.fuse(text_vector, Observation(now=now, text=turn.text, events=events)),
            self._understand(text_vector, profile),
        )
        observed = Observed(text_vector, fused)
        history = await self._recent_turns()
        labels = TurnLabels(
            intent=understanding.intent,
            intent_confidence=understanding.confidence,
            emotion=understanding.emotion,
            emotion_scores=dict(understanding.emotion_scores) or None,
        )
        self._handoff, decision = step_handoff(self._handoff, turn_signal(turn.text, understanding))
        change = self._profile_change(observed.fused, now, "turn", turns=1)
        if not decision.answer:
            # Waiting for an operator: the turn is stored, the profile learns, the bot is quiet.
            async with service.user_lock(self.user.id):
                await service.store.label_turn(turn.turn_id, labels)
                await service.store.apply_profile(self.user.id, change)
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
        async for piece in stream:
            self.emit(ReplyDelta(turn_id=turn.turn_id, text=piece))
        text = stream.result.text
        # Turns of one user in several sessions of this process take turns on the profile row.
        async with service.user_lock(self.user.id):
            reply = await service.store.finish_turn(
                turn.turn_id,
                labels=labels,
                reply_text=text,
                latency_ms=(time.perf_counter() - turn.received) * 1000.0,
                profile=change,
            )
        self._remember_turn(turn.record)
        self._remember_turn(reply)
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
        self.emit(
            Reply(
                turn_id=turn.turn_id,
                text=text,
                intent=intent,
                emotion=emotion,
                handoff=decision.handoff,
            )
        )

    async def _understand(
        self, text_vector: npt.NDArray[np.float32], profile: ProfileRecord | None
    ) -> Understanding:
        """The intent and emotion models' reading of the message, on the profile before it."""
        models = self._service.models
        usable = profile is not None and profile.model_version == models.model_version
        vector = profile.vector if profile is not None and usable else None
        result = await models.understand(text_vector, vector)
        return Understanding(
            intent=result.intent,
            confidence=result.intent_confidence,
            top2=(result.top2[0], result.top2[1]) if len(result.top2) == 2 else None,
            emotion=result.emotion,
            emotion_scores=result.emotion_scores,
        )

    def _remember_turn(self, turn: TurnRecord) -> None:
        if self._turns_seen is not None:
            self._turns_seen.append(turn)
