"""The async store: every read and write the rest of the system makes, as plain dataclasses."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any, TypeVar, cast

import numpy as np
from sqlalchemy import Engine, delete, func, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker

from profiles.engine import EngineOptions, create_engine, create_thread_engine
from profiles.errors import Conflict, NotFound, StoreUnavailable
from profiles.models import (
    BehaviourEvent,
    Conversation,
    Profile,
    ProfileSnapshot,
    SessionFrame,
    Turn,
    User,
    new_id,
    utcnow,
)
from profiles.records import (
    Channel,
    ConversationRecord,
    ConversationStatus,
    EventRecord,
    FinishedTurn,
    NewEvent,
    ProfileRecord,
    ProfileUpdate,
    Role,
    SnapshotRecord,
    StoredFrame,
    TurnLabels,
    TurnRecord,
    UserRecord,
    Vector,
)
from profiles.turn_statements import (
    INSERT_FRAMES,
    INSERT_PROFILE,
    INSERT_SNAPSHOT,
    INSERT_TURN,
    LABEL_TURN,
    SELECT_PROFILE,
    SELECT_PROFILE_FOR_UPDATE,
    UPDATE_PROFILE,
    UPDATE_USER,
    frame_row,
    turn_row,
)


def _to_bytes(vector: Vector) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def _from_bytes(blob: bytes) -> Vector:
    return np.frombuffer(blob, dtype="<f4").astype(np.float32)


def _user(row: User) -> UserRecord:
    return UserRecord(
        id=row.id,
        tenant=row.tenant,
        external_id=row.external_id,
        name=row.name,
        locale=row.locale,
        created_at=row.created_at,
        last_seen_at=row.last_seen_at,
    )


def _profile(row: Profile) -> ProfileRecord:
    return ProfileRecord(
        user_id=row.user_id,
        vector=_from_bytes(row.vector),
        model_version=row.model_version,
        turn_count=row.turn_count,
        event_count=row.event_count,
        emotion_state=row.emotion_state,
        intent_histogram=dict(row.intent_histogram or {}),
        modality_contributions=dict(row.modality_contributions or {}),
        updated_at=row.updated_at,
    )


def _conversation(row: Conversation) -> ConversationRecord:
    return ConversationRecord(
        id=row.id,
        user_id=row.user_id,
        channel=cast(Channel, row.channel),
        status=cast(ConversationStatus, row.status),
        started_at=row.started_at,
        ended_at=row.ended_at,
    )


def _turn(row: Turn) -> TurnRecord:
    return TurnRecord(
        id=row.id,
        conversation_id=row.conversation_id,
        user_id=row.user_id,
        role=cast(Role, row.role),
        client_id=row.client_id,
        text=row.text,
        intent=row.intent,
        intent_confidence=row.intent_confidence,
        emotion=row.emotion,
        emotion_scores=row.emotion_scores,
        latency_ms=row.latency_ms,
        created_at=row.created_at,
    )


def _event(row: BehaviourEvent) -> EventRecord:
    return EventRecord(
        id=row.id,
        user_id=row.user_id,
        conversation_id=row.conversation_id,
        client_id=row.client_id,
        name=row.name,
        props=dict(row.props or {}),
        occurred_at=row.occurred_at,
        received_at=row.received_at,
    )


T = TypeVar("T")

# Errors of an unreachable or overloaded database (pool wait included), as opposed to the
# integrity errors that callers translate themselves.
_UNAVAILABLE = (OperationalError, DBAPIError, PoolTimeout, OSError, ConnectionError)


# A queued transaction's result, or the exception its caller gets.
_Outcome = tuple[Any, BaseException | None]


def _failed(exc: BaseException) -> _Outcome:
    if isinstance(exc, _UNAVAILABLE) and not isinstance(exc, IntegrityError):
        unavailable = StoreUnavailable(type(exc).__name__)
        unavailable.__cause__ = exc
        return None, unavailable
    return None, exc


def _none_or(row: Any, record: Callable[[Any], T]) -> T | None:
    return None if row is None else record(row)


def _note_user_labels(session: Session, user_id: str, labels: TurnLabels) -> None:
    """Keep the user's current emotion and recent intent (for search)."""
    values: dict[str, str] = {}
    if labels.emotion is not None:
        values["current_emotion"] = labels.emotion
    if labels.intent is not None:
        values["recent_intent"] = labels.intent
    if values:
        session.execute(UPDATE_USER, {"b_id": user_id, **values})


def _counted(histogram: dict[str, Any], intent: str | None) -> dict[str, Any]:
    """The profile's intent counts (shown to operators) with one more `intent`."""
    counted = dict(histogram)
    if intent is not None:
        counted[intent] = int(counted.get(intent, 0)) + 1
    return counted


def _note_labels(session: Session, user_id: str, labels: TurnLabels) -> None:
    """Labels of a turn that changes no profile vector: user columns and intent counts."""
    _note_user_labels(session, user_id, labels)
    if labels.intent is not None:
        row = session.get(Profile, user_id)
        if row is not None:
            row.intent_histogram = _counted(row.intent_histogram or {}, labels.intent)


# A profile change is either the new state, or a function of the stored profile that computes
# it inside the writing transaction (one round trip instead of a read, then a write).
ProfileChange = ProfileUpdate | Callable[[ProfileRecord | None], ProfileUpdate]


class Store:
    """Async access to users, profiles, conversations, turns and behaviour events."""

    def __init__(self, engine: AsyncEngine, thread_engine: Engine | None = None) -> None:
        self._engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self.backend = engine.dialect.name
        # The hot transactions (turns, frames, events, profiles) on SQLite run whole on one
        # thread of their own; see `_run`.
        self._thread_engine = thread_engine
        self._thread_sessions = (
            None if thread_engine is None else sessionmaker(thread_engine, expire_on_commit=False)
        )
        self._thread = (
            None
            if thread_engine is None
            else ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        )
        # SQLite has one writer at a time and makes the others poll with growing sleeps; in
        # one process an asyncio lock hands the database over the moment a commit is done.
        self._writer: contextlib.AbstractAsyncContextManager[Any] = (
            asyncio.Lock() if self.backend == "sqlite" else contextlib.nullcontext()
        )
        # Group commit on the store's thread: what `_run` is given while a transaction is
        # running goes into the next one, together.
        self._queued: list[tuple[Callable[[Session], Any], asyncio.Future[Any]]] = []
        self._committer: asyncio.Task[None] | None = None

    @classmethod
    def open(cls, url: str, options: EngineOptions | None = None) -> Store:
        return cls(create_engine(url, options), create_thread_engine(url, options))

    async def close(self) -> None:
        if self._committer is not None:
            await asyncio.shield(self._committer)
        if self._thread is not None and self._thread_engine is not None:
            await asyncio.get_running_loop().run_in_executor(
                self._thread, self._thread_engine.dispose
            )
            self._thread.shutdown(wait=True)
        await self._engine.dispose()

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[AsyncSession]:
        """One transaction; driver and connection failures surface as StoreUnavailable."""
        try:
            async with self._writer, self._sessions() as session, session.begin():
                yield session
        except IntegrityError:
            raise
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(type(exc).__name__) from exc

    async def _run(self, work: Callable[[Session], T]) -> T:
        """`work` in a transaction, written once as synchronous code for both databases.

        On a SQLite file it runs on the store's thread: one hand-over per transaction
        instead of one per statement, begin and commit through aiosqlite, which on a small
        machine costs more CPU than the statements. Work that arrives while a transaction
        runs shares the next one (group commit): with many sessions, a commit and a hand-over
        serve a whole batch of turns. Elsewhere the async driver runs it, one transaction
        each, on the connection pool.
        """
        if self._thread is None:
            try:
                async with self._sessions() as session, session.begin():
                    return await session.run_sync(work)
            except IntegrityError:
                raise
            except _UNAVAILABLE as exc:
                raise StoreUnavailable(type(exc).__name__) from exc
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queued.append((work, future))
        if self._committer is None:
            self._committer = asyncio.create_task(self._commit_queued(), name="sqlite-commits")
        return await future

    async def _commit_queued(self) -> None:
        """Run what is queued, a batch per transaction, until nothing is left."""
        loop = asyncio.get_running_loop()
        try:
            while self._queued:
                batch, self._queued = self._queued, []
                try:
                    async with self._writer:
                        outcomes = await loop.run_in_executor(
                            self._thread, self._in_thread, [work for work, _ in batch]
                        )
                except asyncio.CancelledError:
                    for _, future in (*batch, *self._queued):
                        future.cancel()
                    self._queued = []
                    raise
                except Exception as exc:
                    outcomes = [_failed(exc)] * len(batch)
                for (_, future), (value, error) in zip(batch, outcomes, strict=True):
                    if future.done():
                        continue  # its caller was cancelled; the work ran regardless
                    if error is not None:
                        future.set_exception(error)
                    else:
                        future.set_result(value)
        finally:
            self._committer = None

    def _in_thread(self, works: list[Callable[[Session], Any]]) -> list[_Outcome]:
        if len(works) > 1:
            try:
                assert self._thread_sessions is not None
                with self._thread_sessions() as session, session.begin():
                    return [(work(session), None) for work in works]
            except Exception:  # one failed: each alone, so that the others commit
                pass
        return [self._alone(work) for work in works]

    def _alone(self, work: Callable[[Session], Any]) -> _Outcome:
        assert self._thread_sessions is not None
        try:
            with self._thread_sessions() as session, session.begin():
                return work(session), None
        except Exception as exc:  # raised to its caller
            return _failed(exc)

    async def ping(self) -> bool:
        try:
            async with self._tx() as session:
                await session.execute(text("SELECT 1"))
        except StoreUnavailable:
            return False
        return True

    # users

    async def upsert_user(
        self,
        tenant: str,
        external_id: str,
        *,
        name: str | None = None,
        locale: str | None = None,
    ) -> UserRecord:
        """The user for (tenant, external_id), created on first sight; name and locale refreshed."""
        for _ in range(2):
            try:
                async with self._tx() as session:
                    row = await session.scalar(
                        select(User).where(User.tenant == tenant, User.external_id == external_id)
                    )
                    now = utcnow()
                    if row is None:
                        row = User(
                            tenant=tenant,
                            external_id=external_id,
                            name=name,
                            name_key=name.casefold() if name is not None else None,
                            locale=locale,
                            created_at=now,
                            last_seen_at=now,
                        )
                        session.add(row)
                    else:
                        row.last_seen_at = now
                        if name is not None:
                            row.name = name
                            row.name_key = name.casefold()
                        if locale is not None:
                            row.locale = locale
                    await session.flush()
                    return _user(row)
            except IntegrityError:
                # Another connection created the same user between our select and insert.
                continue
        raise StoreUnavailable("could not create user")

    async def get_user(self, user_id: str) -> UserRecord | None:
        async with self._tx() as session:
            row = await session.get(User, user_id)
            return None if row is None else _user(row)

    # conversations

    async def open_conversation(self, user_id: str, channel: Channel) -> ConversationRecord:
        try:
            async with self._tx() as session:
                row = Conversation(
                    user_id=user_id, channel=channel, status="bot", started_at=utcnow()
                )
                session.add(row)
                await session.flush()
                return _conversation(row)
        except IntegrityError:
            raise NotFound(f"user {user_id}") from None

    async def get_conversation(self, conversation_id: str) -> ConversationRecord | None:
        async with self._tx() as session:
            row = await session.get(Conversation, conversation_id)
            return None if row is None else _conversation(row)

    async def set_conversation_status(
        self, conversation_id: str, status: ConversationStatus
    ) -> ConversationRecord:
        async with self._tx() as session:
            row = await session.get(Conversation, conversation_id)
            if row is None:
                raise NotFound(conversation_id)
            row.status = status
            if status == "closed":
                if row.ended_at is None:
                    row.ended_at = utcnow()
                # A closed conversation cannot be resumed: its frames are no longer needed.
                await session.execute(
                    delete(SessionFrame).where(SessionFrame.conversation_id == conversation_id)
                )
            return _conversation(row)

    # turns

    async def add_user_turn(
        self, conversation_id: str, user_id: str, client_id: str, text: str
    ) -> tuple[TurnRecord, bool]:
        """Store a user's turn; the same client id twice in a conversation is one turn.

        Returns the turn and whether it was created now. Committed when this returns.
        """
        record = TurnRecord(
            id=new_id(),
            conversation_id=conversation_id,
            user_id=user_id,
            role="user",
            client_id=client_id,
            text=text,
            intent=None,
            intent_confidence=None,
            emotion=None,
            emotion_scores=None,
            latency_ms=None,
            created_at=utcnow(),
        )
        values = turn_row(record)
        try:
            await self._run(lambda session: session.execute(INSERT_TURN, values))
            return record, True
        except IntegrityError:
            pass

        def existing(session: Session) -> Turn | None:
            return session.scalar(
                select(Turn).where(
                    Turn.conversation_id == conversation_id, Turn.client_id == client_id
                )
            )

        row = await self._run(lambda session: _none_or(existing(session), _turn))
        if row is None:
            raise NotFound(f"conversation {conversation_id} or user {user_id}")
        return row, False

    async def label_turn(self, turn_id: str, labels: TurnLabels) -> None:
        """The models' labels on a user turn that gets no reply (an operator holds the chat)."""

        def work(session: Session) -> None:
            turn = session.get(Turn, turn_id)
            if turn is None:
                raise NotFound(turn_id)
            turn.intent = labels.intent
            turn.intent_confidence = labels.intent_confidence
            turn.emotion = labels.emotion
            turn.emotion_scores = labels.emotion_scores
            _note_labels(session, turn.user_id, labels)

        await self._run(work)

    async def finish_turn(
        self,
        user_turn_id: str,
        *,
        labels: TurnLabels,
        reply_text: str,
        latency_ms: float,
        profile: ProfileChange | None,
    ) -> FinishedTurn:
        """One transaction: the user turn's labels, the assistant's reply turn and the profile."""

        def work(session: Session) -> FinishedTurn:
            owner = session.execute(
                LABEL_TURN,
                {
                    "b_id": user_turn_id,
                    "intent": labels.intent,
                    "intent_confidence": labels.intent_confidence,
                    "emotion": labels.emotion,
                    "emotion_scores": labels.emotion_scores,
                },
            ).one_or_none()
            if owner is None:
                raise NotFound(user_turn_id)
            conversation_id, user_id = owner
            reply = TurnRecord(
                id=new_id(),
                conversation_id=conversation_id,
                user_id=user_id,
                role="assistant",
                client_id=None,
                text=reply_text,
                intent=None,
                intent_confidence=None,
                emotion=None,
                emotion_scores=None,
                latency_ms=latency_ms,
                created_at=utcnow(),
            )
            session.execute(INSERT_TURN, turn_row(reply))
            saved = self._write_profile(session, user_id, profile, user_turn_id, labels.intent)
            _note_user_labels(session, user_id, labels)
            return FinishedTurn(reply, saved)

        return await self._run(work)

    async def list_turns(self, conversation_id: str) -> list[TurnRecord]:
        async with self._tx() as session:
            rows = await session.scalars(
                select(Turn)
                .where(Turn.conversation_id == conversation_id)
                .order_by(Turn.created_at, Turn.role.desc())
            )
            return [_turn(r) for r in rows]

    # session frames

    async def append_frames(self, frames: Sequence[StoredFrame]) -> None:
        """Store frames of one or more sessions in one transaction.

        Raises Conflict when a (conversation, seq) is taken, NotFound when a conversation is
        gone; nothing is stored then.
        """
        if not frames:
            return
        now = utcnow()
        rows = [frame_row(f, now) for f in frames]
        try:
            await self._run(lambda session: session.execute(INSERT_FRAMES, rows))
        except IntegrityError as exc:
            if "foreign" in str(exc.orig).lower():
                raise NotFound("the conversation of a frame") from None
            raise Conflict("a frame with that seq is stored already") from None

    async def list_frames(self, conversation_id: str, *, limit: int) -> list[StoredFrame]:
        """The conversation's latest `limit` frames, oldest first."""
        async with self._tx() as session:
            rows = await session.execute(
                select(SessionFrame.seq, SessionFrame.body)
                .where(SessionFrame.conversation_id == conversation_id)
                .order_by(SessionFrame.seq.desc())
                .limit(limit)
            )
            return [StoredFrame(conversation_id, seq, body) for seq, body in reversed(rows.all())]

    async def drop_frames(
        self, conversation_id: str, *, below: int | None = None, above: int | None = None
    ) -> None:
        """Delete the conversation's frames with seq < `below`, and those with seq > `above`."""
        of_conversation = SessionFrame.conversation_id == conversation_id

        def work(session: Session) -> None:
            if below is not None:
                session.execute(
                    delete(SessionFrame).where(of_conversation, SessionFrame.seq < below)
                )
            if above is not None:
                session.execute(
                    delete(SessionFrame).where(of_conversation, SessionFrame.seq > above)
                )

        await self._run(work)

    # behaviour events

    async def add_events(
        self, user_id: str, conversation_id: str | None, events: Sequence[NewEvent]
    ) -> int:
        """Store events idempotently on (user, client id); returns how many were new."""
        if not events:
            return 0
        now = utcnow()
        values: list[dict[str, Any]] = [
            {
                "user_id": user_id,
                "conversation_id": conversation_id,
                "client_id": e.client_id,
                "name": e.name,
                "props": e.props,
                "occurred_at": e.occurred_at,
                "received_at": now,
            }
            for e in events
        ]
        stmt: Any
        if self.backend == "postgresql":
            stmt = (
                postgresql.insert(BehaviourEvent)
                .values(values)
                .on_conflict_do_nothing(index_elements=["user_id", "client_id"])
            )
        else:
            stmt = (
                sqlite.insert(BehaviourEvent)
                .values(values)
                .on_conflict_do_nothing(index_elements=["user_id", "client_id"])
            )

        def work(session: Session) -> int:
            return int(getattr(session.execute(stmt), "rowcount", 0) or 0)

        try:
            return await self._run(work)
        except IntegrityError:
            # Duplicates are skipped by ON CONFLICT, so this is a missing user or conversation.
            raise NotFound(f"user {user_id} or conversation {conversation_id}") from None

    async def list_events(self, user_id: str, *, limit: int = 100) -> list[EventRecord]:
        async with self._tx() as session:
            rows = await session.scalars(
                select(BehaviourEvent)
                .where(BehaviourEvent.user_id == user_id)
                .order_by(BehaviourEvent.occurred_at.desc(), BehaviourEvent.id.desc())
                .limit(limit)
            )
            return [_event(r) for r in rows]

    # profiles

    async def get_profile(self, user_id: str) -> ProfileRecord | None:
        return await self._run(lambda session: _none_or(session.get(Profile, user_id), _profile))

    async def apply_profile(self, user_id: str, change: ProfileChange) -> ProfileRecord:
        """A profile change outside a turn (behaviour events, re-fusion), with its snapshot;
        returns the profile as saved."""

        def work(session: Session) -> ProfileRecord:
            saved = self._write_profile(session, user_id, change, None, None)
            assert saved is not None  # a change always leaves a profile
            return saved

        try:
            return await self._run(work)
        except IntegrityError:
            raise NotFound(f"user {user_id}") from None

    async def count_users(self) -> int:
        async with self._tx() as session:
            return int(await session.scalar(select(func.count()).select_from(User)) or 0)

    async def list_user_ids(self, *, after: str | None = None, limit: int = 1000) -> list[str]:
        """User ids in id order, a page at a time (`after` is the last id of the page before)."""
        async with self._tx() as session:
            query = select(User.id).order_by(User.id).limit(limit)
            if after is not None:
                query = query.where(User.id > after)
            return list(await session.scalars(query))

    async def list_user_turns(self, user_id: str) -> list[TurnRecord]:
        """Everything a user said, across conversations, oldest first."""
        async with self._tx() as session:
            rows = await session.scalars(
                select(Turn)
                .where(Turn.user_id == user_id, Turn.role == "user")
                .order_by(Turn.created_at, Turn.id)
            )
            return [_turn(r) for r in rows]

    async def list_snapshots(self, user_id: str) -> list[SnapshotRecord]:
        async with self._tx() as session:
            rows = await session.scalars(
                select(ProfileSnapshot)
                .where(ProfileSnapshot.user_id == user_id)
                .order_by(ProfileSnapshot.id)
            )
            return [
                SnapshotRecord(
                    id=r.id,
                    user_id=r.user_id,
                    vector=_from_bytes(r.vector),
                    model_version=r.model_version,
                    reason=r.reason,
                    turn_id=r.turn_id,
                    created_at=r.created_at,
                    modality_contributions=dict(r.modality_contributions or {}),
                )
                for r in rows
            ]

    def _write_profile(
        self,
        session: Session,
        user_id: str,
        change: ProfileChange | None,
        turn_id: str | None,
        intent: str | None,
    ) -> ProfileRecord | None:
        """Apply `change` (and a snapshot of the result) and count `intent`; the profile as
        saved, or None when there was nothing to change and the user has no profile.

        Core statements: this runs for every turn, and the ORM's unit of work costs more
        than the statements themselves.
        """
        if change is None and intent is None:
            return None
        query = SELECT_PROFILE_FOR_UPDATE if self.backend == "postgresql" else SELECT_PROFILE
        row = session.execute(query, {"b_user_id": user_id}).one_or_none()
        current = None if row is None else _profile(cast(Profile, row))
        if change is None:
            if current is None:
                return None
            saved = replace(current, intent_histogram=_counted(current.intent_histogram, intent))
            session.execute(
                UPDATE_PROFILE, {"b_user_id": user_id, "intent_histogram": saved.intent_histogram}
            )
            return saved
        new = change if isinstance(change, ProfileUpdate) else change(current)
        blob = _to_bytes(new.vector)
        saved = ProfileRecord(
            user_id=user_id,
            vector=np.asarray(new.vector, dtype=np.float32),
            model_version=new.model_version,
            turn_count=(current.turn_count if current else 0) + new.turns,
            event_count=(current.event_count if current else 0) + new.events,
            emotion_state=current.emotion_state if current else None,
            intent_histogram=_counted(current.intent_histogram if current else {}, intent),
            modality_contributions=dict(new.modality_contributions),
            updated_at=utcnow(),
        )
        values = {
            "vector": blob,
            "dim": int(new.vector.shape[0]),
            "model_version": saved.model_version,
            "turn_count": saved.turn_count,
            "event_count": saved.event_count,
            "intent_histogram": saved.intent_histogram,
            "modality_contributions": saved.modality_contributions,
            "updated_at": saved.updated_at,
        }
        if current is None:
            session.execute(INSERT_PROFILE, {"user_id": user_id, "emotion_state": None, **values})
        else:
            session.execute(UPDATE_PROFILE, {"b_user_id": user_id, **values})
        session.execute(
            INSERT_SNAPSHOT,
            {
                "user_id": user_id,
                "vector": blob,
                "model_version": saved.model_version,
                "reason": new.reason,
                "turn_id": turn_id,
                "modality_contributions": saved.modality_contributions,
                "created_at": saved.updated_at,
            },
        )
        return saved
