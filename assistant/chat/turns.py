"""The turn pipeline: a message read by the models, answered, and stored with its labels.

    message -> read (profile + recent events + text, and speech for a call) -> dialogue
            -> handoff policy -> reply generator (or a clarifying question) -> reply deltas
            and reply -> labels, reply turn, profile update, dialogue state

Behaviour events take the same way without a reply: observed, then folded into the profile.
One TurnPipeline serves every session of a ChatService and is given all it works with; what
it keeps of one session between turns (the profile, events and turns it read, and the
conversation's dialogue state) is that session's TurnMemory. The dialogue
(assistant/replies/dialogue.py) reads each message against the conversation's topic, open
question and details; the reply is grounded in the intent it decides, and the labels stored
for the message are that intent's. The session queues the work and owns the task that runs it
(assistant/chat/session.py).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from assistant.chat.protocol import Reply, ReplyDelta, ServerFrame
from assistant.core.metrics import Metrics
from assistant.core.wire import EmotionLabel, IntentLabel
from assistant.replies.conversation import read_conversation
from assistant.replies.details import Details, gather_details
from assistant.replies.dialogue import (
    DialogueConfig,
    DialogueState,
    DialogueTurn,
    TurnKind,
    clarifying_question,
    read_turn,
)
from assistant.replies.follow_up_model import FollowUpModel, load_follow_up_model
from assistant.replies.generation import GenerationRequest, ResponseGenerator
from assistant.replies.handoff import (
    HandoffDecision,
    HandoffState,
    near_handoff,
    take_over,
    turn_signal,
)
from assistant.replies.handoff import release as release_handoff
from assistant.replies.handoff import step as step_handoff
from assistant.replies.profile_summary import summarize_profile
from assistant.replies.prompting import ConversationTurn
from assistant.replies.understanding import Understanding
from assistant.replies.waiting import (
    BACK_TO_BOT,
    WaitingState,
    WaitStatus,
    asks_for_bot,
    handoff_notice,
    waiting_reply,
)
from fusion import (
    FuseResult,
    FusionRuntime,
    Observation,
    Observed,
    ProfileState,
    TurnInput,
    TurnReading,
    UnderstandingResult,
    conditions_heads,
)
from profiles import (
    EventRecord,
    NewEvent,
    ProfileRecord,
    ProfileUpdate,
    Store,
    TurnLabels,
    TurnRecord,
)

# Earlier turns of the conversation that the reply generator sees.
WINDOW_TURNS = 8


@dataclass(frozen=True, slots=True)
class SeenEvent:
    """An event this session stored, in the shape of a stored record (without a row id)."""

    user_id: str
    client_id: str
    name: str
    occurred_at: datetime
    props: dict[str, Any]


@dataclass(frozen=True, slots=True)
class TurnRead:
    """The models' reading of a message and what they read besides its text."""

    reading: TurnReading
    profile: ProfileRecord | None  # before the message
    events: list[EventRecord | SeenEvent]
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


@dataclass(frozen=True, slots=True)
class PendingBehaviour:
    """New behaviour events to fold into the profile; many event frames share one job."""


@dataclass(slots=True)
class TurnMemory:
    """What the pipeline keeps of one session between its turns, so that a turn reads the
    database only for what it has not seen."""

    user_id: str
    conversation_id: str
    channel: str = "chat"  # chat | voice: a call's replies and notices are worded for a phone
    # The user's latest events by client id: read once, then kept up to date (None: unread).
    events: dict[str, EventRecord | SeenEvent] | None = None
    # This conversation's latest turns, newest last (None: unread).
    turns: deque[TurnRecord] | None = None
    # The user's profile as this session last read or wrote it (once `profile_known`): the
    # next turn's heads are conditioned on it without a read.
    profile: ProfileRecord | None = None
    profile_known: bool = False
    handoff: HandoffState = field(default_factory=HandoffState)
    waiting: WaitingState = field(default_factory=WaitingState)
    # The conversation's dialogue state: read from the store once, then kept (None: unread).
    dialogue: DialogueState | None = None

    @property
    def read_before(self) -> bool:
        """Whether the models can start on a message with nothing to read from the database."""
        return self.profile_known and self.events is not None

    def released(self) -> None:
        """An operator handed the conversation back, or the customer asked for the bot: the
        bot answers again."""
        self.handoff = release_handoff(self.handoff)
        self.waiting = WaitingState()

    def waits(self) -> None:
        """The conversation waited for a person on the replica it comes from."""
        self.handoff = take_over(self.handoff)

    def saved(self, profile: ProfileRecord | None) -> None:
        if profile is not None:
            self.profile, self.profile_known = profile, True

    def remember_turn(self, turn: TurnRecord) -> None:
        if self.turns is not None:
            self.turns.append(turn)


class TurnOutput(Protocol):
    """Where a turn's frames go: its session (assistant.chat.session.ChatSession)."""

    # Set while a voice call listens: it synthesizes each sentence as soon as it has it.
    listener: Callable[[ServerFrame], None] | None

    def emit(self, frame: ServerFrame) -> int: ...

    async def wait_stored(self) -> None:
        """Until every frame emitted so far is stored."""
        ...

    async def operators_online(self) -> bool:
        """Whether an operator who could take the conversation over is signed in anywhere."""
        ...


class TurnPipeline:
    """Reads, answers and stores turns for every session of a service; `generator` is None
    until the runtime has built it (a turn before that fails)."""

    def __init__(
        self,
        models: FusionRuntime,
        store: Store,
        metrics: Metrics,
        user_lock: Callable[[str], asyncio.Lock],
        generator: ResponseGenerator | None = None,
        *,
        dialogue: DialogueConfig | None = None,
    ) -> None:
        self.models = models
        self.store = store
        self.metrics = metrics
        # Turns of one user in several sessions of this process take turns on the profile row.
        self.user_lock = user_lock
        self.generator = generator
        self.dialogue = dialogue or DialogueConfig()
        self.follow_ups: FollowUpModel | None = (
            load_follow_up_model() if self.dialogue.enabled else None
        )

    async def read(
        self,
        memory: TurnMemory,
        text: str,
        now: datetime,
        speech: npt.NDArray[np.float32] | None = None,
        voice: npt.NDArray[np.float32] | None = None,
    ) -> TurnRead:
        models = self.models
        profile = await self._profile_before(memory)
        events = await self._recent_events(memory)
        # A vector from another fusion model lives in another space: the heads get none.
        # A vector of words alone is not what the heads learned to read (fusion.profile_update).
        usable = (
            profile is not None
            and profile.model_version == models.model_version
            and conditions_heads(profile.modality_contributions)
        )
        reading = await models.read_turn(
            TurnInput(
                text, profile.vector if profile and usable else None, events, now, speech, voice
            )
        )
        return TurnRead(reading, profile, events, now)

    def remember_events(self, memory: TurnMemory, events: Sequence[NewEvent]) -> None:
        """Events the session just stored; a client id seen before is the same event."""
        if memory.events is None:
            return
        for event in events:
            seen = SeenEvent(
                memory.user_id, event.client_id, event.name, event.occurred_at, dict(event.props)
            )
            memory.events.setdefault(event.client_id, seen)
        limit = self.models.config.max_events
        if len(memory.events) > limit:
            newest = sorted(memory.events.values(), key=lambda e: e.occurred_at)[-limit:]
            memory.events = {e.client_id: e for e in newest}

    async def absorb_behaviour(self, memory: TurnMemory, count: int) -> None:
        """Fold `count` newly stored events into the user's profile."""
        now = datetime.now(UTC)
        events = await self._recent_events(memory)
        observed = await self.models.observe(Observation(now=now, text=None, events=events))
        change = self._profile_change(observed.fused, now, "behaviour", events=count)
        async with self.user_lock(memory.user_id):
            memory.saved(await self.store.apply_profile(memory.user_id, change))

    async def answer(self, memory: TurnMemory, turn: PendingTurn, out: TurnOutput) -> None:
        read = await (
            turn.reading or self.read(memory, turn.text, datetime.now(UTC), turn.speech, turn.voice)
        )
        profile, now = read.profile, read.now
        understanding = read_conversation(
            self.generator.retriever.index if self.generator is not None else None,
            turn.text,
            read.reading.text_vector,
            _understanding(read.reading.understanding),
        )
        observed = Observed(read.reading.text_vector, read.reading.fused)
        history = await self._recent_turns(memory, turn.record.position)
        before = await self._dialogue_state(memory)
        dialogue = self._read_dialogue(before, turn.text, read, understanding)
        asking = dialogue is not None and dialogue.question is not None
        memory.handoff, decision = step_handoff(
            memory.handoff,
            turn_signal(
                turn.text,
                dialogue.understanding if dialogue is not None else understanding,
                clarifying=asking,
            ),
        )
        if dialogue is not None and asking and decision.handoff:
            # Handed to a person: the question is not asked.
            dialogue = DialogueTurn(
                TurnKind.NEW_TOPIC, understanding, replace(dialogue.state, question=None)
            )
        if dialogue is not None:
            understanding = dialogue.understanding
        details = self._details(turn.text, read, understanding)
        after = before
        if dialogue is not None and before is not None and decision.answer:
            after = dialogue.state.noting(details, fresh=dialogue.state.topic != before.topic)
            details = after.details
        labels = TurnLabels(
            intent=understanding.intent,
            intent_confidence=understanding.confidence,
            emotion=understanding.emotion,
            emotion_scores=dict(understanding.emotion_scores) or None,
        )
        change = self._profile_change(observed.fused, now, "turn", turns=1)
        # What the write below will store, unless another session of the user writes first:
        # the next message's models can start on it before the write commits.
        memory.profile = _predicted(memory.user_id, profile, change(profile), labels, now)
        if decision.answer and dialogue is not None and dialogue.question is not None:
            said = self._ask(memory, turn, out, dialogue, understanding)
        elif decision.answer:
            said = await self._write(
                memory, turn, out, read, understanding, history, decision, details
            )
        elif asks_for_bot(turn.text):
            # The customer would rather carry on with the bot than wait for a person.
            memory.released()
            said = _Said(BACK_TO_BOT)
        else:
            # Waiting for a person: never silence, but no answer to the question either.
            memory.waiting, wait = waiting_reply(
                memory.waiting, await out.operators_online(), memory.channel
            )
            said = _Said(wait.text, handoff=True, waiting=wait.status)
        if not decision.answer and not turn.recovered:
            out.emit(ReplyDelta(turn_id=turn.turn_id, text=said.text))
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
        said_at = datetime.now(UTC)
        out.emit(
            Reply(
                turn_id=turn.turn_id,
                text=said.text,
                intent=intent,
                emotion=emotion,
                handoff=said.handoff,
                waiting=said.waiting.value if said.waiting is not None else None,
                turn=dialogue.kind.value
                if dialogue is not None and dialogue.kind is not None and decision.answer
                else None,
                suggestions=dialogue.suggestions
                if dialogue is not None and decision.answer
                else None,
            )
        )
        latency_ms = (time.perf_counter() - turn.received) * 1000.0
        self.metrics.turn_answered(latency_ms / 1000.0)
        # The reply frame is journaled (and sent) before the turn's rows take the database:
        # the client has its reply one commit sooner. A restart in between finds the stored
        # reply frame and does not answer the message again (assistant/chat/recovery.py).
        await out.wait_stored()
        async with self.user_lock(memory.user_id):
            finished = await self.store.finish_turn(
                turn.turn_id,
                labels=labels,
                reply_text=said.text,
                latency_ms=latency_ms,
                profile=change,
                said_at=said_at,
                dialogue_state=after.to_json() if after is not None and after != before else None,
            )
        memory.saved(finished.profile)
        if after is not None:
            memory.dialogue = after
        memory.remember_turn(turn.record)
        memory.remember_turn(finished.reply)

    async def _write(
        self,
        memory: TurnMemory,
        turn: PendingTurn,
        out: TurnOutput,
        read: TurnRead,
        understanding: Understanding,
        history: list[TurnRecord],
        decision: HandoffDecision,
        details: Details,
    ) -> _Said:
        """The generator's reply, streamed as deltas; a handoff's ends with where the customer
        stands."""
        if self.generator is None:
            raise RuntimeError("the turn pipeline has no response generator yet")
        profile, events, now = read.profile, read.events, read.now
        request = GenerationRequest(
            user_id=memory.user_id,
            utterance=turn.text,
            understanding=understanding,
            profile=summarize_profile(
                memory.user_id, profile=profile, events=events, turns=history, now=now
            ),
            window=tuple(ConversationTurn(t.role, t.text) for t in history),
            handoff=decision.handoff,
            near_handoff=near_handoff(memory.handoff),
            channel=memory.channel,
            details=details,
            query_vector=read.reading.text_vector,
        )
        stream = self.generator.stream(request)
        deltas = _Deltas(lambda text: out.emit(ReplyDelta(turn_id=turn.turn_id, text=text)))

        def send(piece: str) -> None:
            if turn.recovered:
                return
            if out.listener is not None:
                deltas.flush()
                out.emit(ReplyDelta(turn_id=turn.turn_id, text=piece))
            else:
                deltas.add(piece)

        try:
            async for piece in stream:
                send(piece)
            if not decision.handoff:
                return _Said(stream.result.text)
            memory.waiting, notice = handoff_notice(await out.operators_online(), memory.channel)
            send(" " + notice.text)
            return _Said(f"{stream.result.text} {notice.text}", True, notice.status)
        finally:
            deltas.flush()

    def _ask(
        self,
        memory: TurnMemory,
        turn: PendingTurn,
        out: TurnOutput,
        dialogue: DialogueTurn,
        understanding: Understanding,
    ) -> _Said:
        """A clarifying question, sent as one delta: policy text, never a chat model's, like
        the handoff notice (the question's choices are the dialogue's to offer)."""
        assert self.generator is not None and dialogue.question is not None
        text = clarifying_question(
            dialogue.question,
            self.generator.kb,
            emotion=understanding.emotion,
            channel=memory.channel,
        )
        if not turn.recovered:
            out.emit(ReplyDelta(turn_id=turn.turn_id, text=text))
        return _Said(text)

    async def _dialogue_state(self, memory: TurnMemory) -> DialogueState | None:
        """The conversation's dialogue state (None with the dialogue off): read from the store
        on the session's first turn, then the one this session keeps."""
        if not self.dialogue.enabled or self.generator is None:
            return None
        if memory.dialogue is None:
            stored = await self.store.get_conversation(memory.conversation_id)
            memory.dialogue = DialogueState.from_json(
                stored.dialogue_state if stored is not None else None, self.generator.kb.intents
            )
        return memory.dialogue

    def _read_dialogue(
        self,
        state: DialogueState | None,
        text: str,
        read: TurnRead,
        understanding: Understanding,
    ) -> DialogueTurn | None:
        if state is None or self.generator is None or self.follow_ups is None:
            return None
        return read_turn(
            state,
            text,
            understanding,
            self.follow_ups.score(read.reading.text_vector, text),
            self.generator.kb,
            self.dialogue.policy,
        )

    def _details(self, text: str, read: TurnRead, understanding: Understanding) -> Details:
        """What this turn's message and the customer's recent events say about the thing the
        reply is about (assistant.replies.details)."""
        kb = self.generator.kb if self.generator is not None else None
        entry = kb.for_intent(understanding.intent) if kb is not None else None
        about = entry.about if entry is not None else None
        return gather_details(text, read.events, about=about, now=read.now)

    async def _recent_events(self, memory: TurnMemory) -> list[EventRecord | SeenEvent]:
        limit = self.models.config.max_events
        if memory.events is None:
            stored = await self.store.list_events(memory.user_id, limit=limit)
            memory.events = {e.client_id: e for e in reversed(stored)}
        return list(memory.events.values())[-limit:]

    async def _recent_turns(self, memory: TurnMemory, before: int) -> list[TurnRecord]:
        """The turns said before the one at position `before` (stored ones, on the first read:
        later messages may be stored already)."""
        if memory.turns is None:
            stored = await self.store.list_turns(memory.conversation_id)
            earlier = (t for t in stored if t.position < before)
            memory.turns = deque(earlier, maxlen=WINDOW_TURNS)
        return list(memory.turns)

    async def _profile_before(self, memory: TurnMemory) -> ProfileRecord | None:
        if not memory.profile_known:
            memory.profile = await self.store.get_profile(memory.user_id)
            memory.profile_known = True
        return memory.profile

    def _profile_change(
        self, fused: FuseResult, now: datetime, reason: str, *, turns: int = 0, events: int = 0
    ) -> Callable[[ProfileRecord | None], ProfileUpdate]:
        """The profile update as a function of the stored profile, run in its write transaction."""
        models = self.models

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


@dataclass(frozen=True, slots=True)
class _Said:
    """The text of a turn's reply and what its frame says about a handoff."""

    text: str
    handoff: bool = False
    waiting: WaitStatus | None = None


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


def _state(profile: ProfileRecord | None, model_version: str) -> ProfileState | None:
    # A vector from another fusion model lives in another space: start afresh rather than mix.
    if profile is None or profile.model_version != model_version:
        return None
    contributions = {k: float(v) for k, v in profile.modality_contributions.items()}
    return ProfileState(profile.vector, contributions)


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
