"""SQLAlchemy 2 typed models: users, profiles, conversations, turns, events, operators, audit.

Identifiers exposed to clients (users, conversations, turns) are random hex UUIDs so that
one user cannot walk another's ids. Vectors are stored as little-endian float32 bytes,
which both SQLite and PostgreSQL hold natively.
"""

from __future__ import annotations

import os
import threading
import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


# Random uuid4 ids from os.urandom read 256 ids at a time, per thread. Each read is a system
# call that gives the GIL up, and on a busy server the event loop then waits for a model
# thread to hand it back: once per id, that was a tenth of a millisecond per turn.
_ID_BYTES = 16
_POOL_BYTES = 256 * _ID_BYTES


class _RandomPool(threading.local):
    def __init__(self) -> None:
        self.refill()

    def refill(self) -> None:
        self.pool = b""
        self.at = 0


_random = _RandomPool()
# A forked child must not hand out the ids its parent has left in the pool.
os.register_at_fork(after_in_child=_random.refill)


def new_id() -> str:
    """A random (version 4) UUID as 32 hex digits."""
    state = _random
    if state.at + _ID_BYTES > len(state.pool):
        state.pool, state.at = os.urandom(_POOL_BYTES), 0
    start = state.at
    state.at = start + _ID_BYTES
    return uuid.UUID(bytes=state.pool[start : start + _ID_BYTES], version=4).hex


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in and out; SQLite keeps no offset, so reads are marked UTC again."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; pass an aware UTC datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, datetime: UTCDateTime}


class User(Base):
    __tablename__ = "users"
    __table_args__ = (
        UniqueConstraint("tenant", "external_id", name="uq_users_tenant_external"),
        # Operator search: prefix scans on the folded name and the external id (PostgreSQL
        # needs text_pattern_ops for LIKE 'p%' under any collation), newest-seen first.
        Index("ix_users_name_key", "name_key", postgresql_ops={"name_key": "text_pattern_ops"}),
        Index(
            "ix_users_external_id",
            "external_id",
            postgresql_ops={"external_id": "text_pattern_ops"},
        ),
        Index("ix_users_last_seen", "last_seen_at", "id"),
        Index("ix_users_emotion_seen", "current_emotion", "last_seen_at", "id"),
        Index("ix_users_intent_seen", "recent_intent", "last_seen_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant: Mapped[str] = mapped_column(String(64))
    external_id: Mapped[str] = mapped_column(String(128))
    name: Mapped[str | None] = mapped_column(String(200))
    # casefold(name), kept by the store, for case-insensitive prefix search.
    name_key: Mapped[str | None] = mapped_column(String(200))
    locale: Mapped[str | None] = mapped_column(String(35))
    consent: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The latest labelled user turn's emotion and intent (the profile's state, kept here so
    # that search can filter and order newest-seen first from one index).
    current_emotion: Mapped[str | None] = mapped_column(String(32))
    recent_intent: Mapped[str | None] = mapped_column(String(64))


class Profile(Base):
    __tablename__ = "profiles"

    user_id: Mapped[str] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    dim: Mapped[int] = mapped_column(Integer)
    model_version: Mapped[str] = mapped_column(String(64))
    turn_count: Mapped[int] = mapped_column(Integer, default=0)
    event_count: Mapped[int] = mapped_column(Integer, default=0)
    emotion_state: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    intent_histogram: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    modality_contributions: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class ProfileSnapshot(Base):
    __tablename__ = "profile_snapshots"
    __table_args__ = (Index("ix_profile_snapshots_user_created", "user_id", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    model_version: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(16))
    turn_id: Mapped[str | None] = mapped_column(String(32))
    modality_contributions: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Conversation(Base):
    __tablename__ = "conversations"
    __table_args__ = (Index("ix_conversations_user_started", "user_id", "started_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    channel: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(8), default="bot")
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column()
    # The position the conversation's next turn takes (see Turn.position).
    next_position: Mapped[int] = mapped_column(Integer, default=0)
    # What the conversation is about so far (topic, open questions, details gathered), as the
    # turn that last changed it left it; None until a turn sets it.
    dialogue_state: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class Turn(Base):
    """One thing said in a conversation. `position` is its place in the conversation, taken
    when it was said: a user turn takes two, the second kept for the reply that answers it
    (written later, after the next message may have been stored); an operator turn takes one.
    Readers order a conversation by position, never by `created_at` (the time it was said)."""

    __tablename__ = "turns"
    __table_args__ = (
        UniqueConstraint("conversation_id", "client_id", name="uq_turns_conversation_client"),
        Index("ix_turns_conversation_position", "conversation_id", "position", unique=True),
        Index("ix_turns_user_created", "user_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(10))
    client_id: Mapped[str | None] = mapped_column(String(128))
    text: Mapped[str] = mapped_column(Text)
    intent: Mapped[str | None] = mapped_column(String(64))
    intent_confidence: Mapped[float | None] = mapped_column(Float)
    emotion: Mapped[str | None] = mapped_column(String(32))
    emotion_scores: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    position: Mapped[int] = mapped_column(Integer)


class SessionFrame(Base):
    """A chat session's server frame, written before it is sent: a client resumes from these
    after the server restarted. Only the latest frames of an open conversation are kept."""

    __tablename__ = "session_frames"

    conversation_id: Mapped[str] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class BehaviourEvent(Base):
    __tablename__ = "behaviour_events"
    __table_args__ = (
        UniqueConstraint("user_id", "client_id", name="uq_behaviour_events_user_client"),
        Index("ix_behaviour_events_user_occurred", "user_id", "occurred_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    conversation_id: Mapped[str | None] = mapped_column(
        ForeignKey("conversations.id", ondelete="SET NULL")
    )
    client_id: Mapped[str] = mapped_column(String(128))
    name: Mapped[str] = mapped_column(String(64))
    props: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    occurred_at: Mapped[datetime] = mapped_column()
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


class Operator(Base):
    __tablename__ = "operators"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    role: Mapped[str] = mapped_column(String(8))
    key_hash: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column()


class AuditEntry(Base):
    """Survives erasure: subject_user_id is a plain column, not a foreign key."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_subject_at", "subject_user_id", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    operator_id: Mapped[str | None] = mapped_column(String(32))
    action: Mapped[str] = mapped_column(String(32))
    subject_user_id: Mapped[str | None] = mapped_column(String(32))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class LabelCorrection(Base):
    __tablename__ = "label_corrections"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    turn_id: Mapped[str] = mapped_column(ForeignKey("turns.id", ondelete="CASCADE"), index=True)
    operator_id: Mapped[str | None] = mapped_column(String(32))
    field: Mapped[str] = mapped_column(String(8))
    old_value: Mapped[str | None] = mapped_column(String(64))
    new_value: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
