"""The async store: every read and write the chat and voice sides make, as frozen dataclasses.

Users, conversations, turns, session frames, behaviour events and profiles. The transactions
run in `profiles.transactions` (group commit on SQLite); the turn path's writes are in
`profiles.turn_writes`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Engine, delete, func, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Session

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
    or_none,
    profile_record,
    snapshot_record,
    turn_record,
    user_record,
)
from profiles.transactions import Transactions
from profiles.turn_statements import INSERT_FRAMES, frame_row
from profiles.turn_writes import (
    FinishTurn,
    InsertTurn,
    ProfileChange,
    ProfileWrite,
    label_turn,
    write_profiles,
)

__all__ = ["Store"]


class Store:
    """Async access to users, profiles, conversations, turns and behaviour events."""

    def __init__(self, engine: AsyncEngine, thread_engine: Engine | None = None) -> None:
        # The operator side of the store (`OperatorStore`) runs on these too.
        self.transactions = Transactions(engine, thread_engine)
        self.backend = self.transactions.backend

    @property
    def thread_cpu_s(self) -> float:
        """CPU seconds of the SQLite thread in transactions."""
        return self.transactions.thread_cpu_s

    @classmethod
    def open(cls, url: str, options: EngineOptions | None = None) -> Store:
        return cls(create_engine(url, options), create_thread_engine(url, options))

    async def close(self) -> None:
        await self.transactions.close()

    async def ping(self) -> bool:
        try:
            async with self.transactions.tx() as session:
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
                async with self.transactions.tx() as session:
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
        return await self.transactions.get(User, user_id, user_record)

    # conversations

    async def open_conversation(self, user_id: str, channel: Channel) -> ConversationRecord:
        try:
            async with self.transactions.tx() as session:
                row = Conversation(
                    user_id=user_id, channel=channel, status="bot", started_at=utcnow()
                )
                session.add(row)
                await session.flush()
                return conversation_record(row)
        except IntegrityError:
            raise NotFound(f"user {user_id}") from None

    async def get_conversation(self, conversation_id: str) -> ConversationRecord | None:
        return await self.transactions.get(Conversation, conversation_id, conversation_record)

    async def set_conversation_status(
        self, conversation_id: str, status: ConversationStatus
    ) -> ConversationRecord:
        async with self.transactions.tx() as session:
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
        """Store a user's turn, said now; the same client id twice in a conversation is one
        turn (the second takes no positions).

        Returns the turn and whether it was created now. Committed when this returns.
        """
        insert = InsertTurn(conversation_id, user_id, "user", text, utcnow(), client_id)
        try:
            return cast(TurnRecord, await self.transactions.run(insert)), True
        except IntegrityError:
            pass

        def existing(session: Session) -> Turn | None:
            return session.scalar(
                select(Turn).where(
                    Turn.conversation_id == conversation_id, Turn.client_id == client_id
                )
            )

        row = await self.transactions.run(lambda session: or_none(turn_record, existing(session)))
        if row is None:
            raise NotFound(f"conversation {conversation_id} or user {user_id}")
        return row, False

    async def label_turn(self, turn_id: str, labels: TurnLabels) -> None:
        """The models' labels on a user turn that gets no reply (an operator holds the chat)."""
        await self.transactions.run(lambda session: label_turn(session, turn_id, labels))

    async def finish_turn(
        self,
        user_turn_id: str,
        *,
        labels: TurnLabels,
        reply_text: str,
        latency_ms: float,
        profile: ProfileChange | None,
        said_at: datetime | None = None,
        dialogue_state: dict[str, Any] | None = None,
    ) -> FinishedTurn:
        """One transaction: the user turn's labels, the assistant's reply turn (said at
        `said_at`, default now, and placed right after its message), the profile, and the
        conversation's dialogue state when given (None leaves it as it is)."""
        lock = self.backend == "postgresql"
        return cast(
            FinishedTurn,
            await self.transactions.run(
                FinishTurn(
                    user_turn_id,
                    labels,
                    reply_text,
                    latency_ms,
                    profile,
                    lock,
                    said_at,
                    dialogue_state,
                )
            ),
        )

    async def list_turns(self, conversation_id: str) -> list[TurnRecord]:
        """The conversation's turns in the order they were said."""
        return await self.transactions.records(
            select(Turn).where(Turn.conversation_id == conversation_id).order_by(Turn.position),
            turn_record,
        )

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
            await self.transactions.run(lambda session: session.execute(INSERT_FRAMES, rows))
        except IntegrityError as exc:
            if "foreign" in str(exc.orig).lower():
                raise NotFound("the conversation of a frame") from None
            raise Conflict("a frame with that seq is stored already") from None

    async def list_frames(self, conversation_id: str, *, limit: int) -> list[StoredFrame]:
        """The conversation's latest `limit` frames, oldest first."""
        async with self.transactions.tx() as session:
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

        await self.transactions.run(work)

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
            return await self.transactions.run(work)
        except IntegrityError:
            # Duplicates are skipped by ON CONFLICT, so this is a missing user or conversation.
            raise NotFound(f"user {user_id} or conversation {conversation_id}") from None

    async def list_events(self, user_id: str, *, limit: int = 100) -> list[EventRecord]:
        return await self.transactions.records(
            select(BehaviourEvent)
            .where(BehaviourEvent.user_id == user_id)
            .order_by(BehaviourEvent.occurred_at.desc(), BehaviourEvent.id.desc())
            .limit(limit),
            event_record,
        )

    # profiles

    async def get_profile(self, user_id: str) -> ProfileRecord | None:
        return await self.transactions.run(
            lambda session: or_none(profile_record, session.get(Profile, user_id))
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
            return await self.transactions.run(work)
        except IntegrityError:
            raise NotFound(f"user {user_id}") from None

    async def count_users(self) -> int:
        async with self.transactions.tx() as session:
            return int(await session.scalar(select(func.count()).select_from(User)) or 0)

    async def list_user_ids(self, *, after: str | None = None, limit: int = 1000) -> list[str]:
        """User ids in id order, a page at a time (`after` is the last id of the page before)."""
        async with self.transactions.tx() as session:
            query = select(User.id).order_by(User.id).limit(limit)
            if after is not None:
                query = query.where(User.id > after)
            return list(await session.scalars(query))

    async def list_user_turns(self, user_id: str) -> list[TurnRecord]:
        """Everything a user said, across conversations, oldest first (a user turn's
        `created_at` is when it was said; within a conversation, position decides ties)."""
        return await self.transactions.records(
            select(Turn)
            .where(Turn.user_id == user_id, Turn.role == "user")
            .order_by(Turn.created_at, Turn.conversation_id, Turn.position),
            turn_record,
        )

    async def list_snapshots(self, user_id: str) -> list[SnapshotRecord]:
        return await self.transactions.records(
            select(ProfileSnapshot)
            .where(ProfileSnapshot.user_id == user_id)
            .order_by(ProfileSnapshot.id),
            snapshot_record,
        )
