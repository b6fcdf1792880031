"""The async store: every read and write the rest of the system makes, as plain dataclasses."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, TypeVar, cast

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
    SnapshotRecord,
    StoredFrame,
    TurnLabels,
    TurnRecord,
    UserRecord,
)
from profiles.rows import (
    conversation_record,
    event_record,
    profile_record,
    snapshot_record,
    turn_record,
    user_record,
)
from profiles.turn_statements import (
    INSERT_FRAMES,
    frame_row,
    turn_row,
)
from profiles.turn_writes import (
    FinishTurn,
    InsertTurn,
    ProfileChange,
    ProfileWrite,
    counted,
    note_user_labels,
    run_together,
    write_profiles,
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


def _note_labels(session: Session, user_id: str, labels: TurnLabels) -> None:
    """Labels of a turn that changes no profile vector: user columns and intent counts."""
    note_user_labels(session, [(user_id, labels)])
    if labels.intent is not None:
        row = session.get(Profile, user_id)
        if row is not None:
            row.intent_histogram = counted(row.intent_histogram or {}, labels.intent)


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
        # CPU seconds of the store's thread in transactions, for the metrics: on a small
        # machine it is taken from the models.
        self.thread_cpu_s = 0.0

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
        started = time.thread_time()
        try:
            return self._together(works)
        finally:
            self.thread_cpu_s += time.thread_time() - started

    def _together(self, works: list[Callable[[Session], Any]]) -> list[_Outcome]:
        if len(works) > 1:
            try:
                assert self._thread_sessions is not None
                with self._thread_sessions() as session, session.begin():
                    return [(value, None) for value in run_together(session, works)]
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
                    return user_record(row)
            except IntegrityError:
                # Another connection created the same user between our select and insert.
                continue
        raise StoreUnavailable("could not create user")

    async def get_user(self, user_id: str) -> UserRecord | None:
        async with self._tx() as session:
            row = await session.get(User, user_id)
            return None if row is None else user_record(row)

    # conversations

    async def open_conversation(self, user_id: str, channel: Channel) -> ConversationRecord:
        try:
            async with self._tx() as session:
                row = Conversation(
                    user_id=user_id, channel=channel, status="bot", started_at=utcnow()
                )
                session.add(row)
                await session.flush()
                return conversation_record(row)
        except IntegrityError:
            raise NotFound(f"user {user_id}") from None

    async def get_conversation(self, conversation_id: str) -> ConversationRecord | None:
        async with self._tx() as session:
            row = await session.get(Conversation, conversation_id)
            return None if row is None else conversation_record(row)

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
            return conversation_record(row)

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
            await self._run(InsertTurn(values))
            return record, True
        except IntegrityError:
            pass

        def existing(session: Session) -> Turn | None:
            return session.scalar(
                select(Turn).where(
                    Turn.conversation_id == conversation_id, Turn.client_id == client_id
                )
            )

        row = await self._run(lambda session: _none_or(existing(session), turn_record))
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
        lock = self.backend == "postgresql"
        return cast(
            FinishedTurn,
            await self._run(
                FinishTurn(user_turn_id, labels, reply_text, latency_ms, profile, lock)
            ),
        )

    async def list_turns(self, conversation_id: str) -> list[TurnRecord]:
        async with self._tx() as session:
            rows = await session.scalars(
                select(Turn)
                .where(Turn.conversation_id == conversation_id)
                .order_by(Turn.created_at, Turn.role.desc())
            )
            return [turn_record(r) for r in rows]

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
            return [event_record(r) for r in rows]

    # profiles

    async def get_profile(self, user_id: str) -> ProfileRecord | None:
        return await self._run(
            lambda session: _none_or(session.get(Profile, user_id), profile_record)
        )

    async def apply_profile(self, user_id: str, change: ProfileChange) -> ProfileRecord:
        """A profile change outside a turn (behaviour events, re-fusion), with its snapshot;
        returns the profile as saved."""

        def work(session: Session) -> ProfileRecord:
            lock = self.backend == "postgresql"
            saved = write_profiles(session, [ProfileWrite(user_id, change, None, None)], lock=lock)[
                0
            ]
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
            return [turn_record(r) for r in rows]

    async def list_snapshots(self, user_id: str) -> list[SnapshotRecord]:
        async with self._tx() as session:
            rows = await session.scalars(
                select(ProfileSnapshot)
                .where(ProfileSnapshot.user_id == user_id)
                .order_by(ProfileSnapshot.id)
            )
            return [snapshot_record(r) for r in rows]
