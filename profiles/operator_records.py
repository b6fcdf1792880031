"""Frozen dataclasses for the operator side: operators, search, profile views, audit, erasure."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from profiles.records import (
    ConversationRecord,
    EventRecord,
    ProfileRecord,
    SnapshotRecord,
    TurnRecord,
    UserRecord,
)

OperatorRole = Literal["viewer", "agent", "admin"]
LabelField = Literal["intent", "emotion"]


@dataclass(frozen=True, slots=True)
class OperatorRecord:
    id: str
    name: str
    role: OperatorRole
    key_hash: str
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class UserQuery:
    """Operator search. Every filter is optional; results come newest-seen first.

    `q` matches a user id exactly, or a prefix of the name (case-insensitive) or of the
    external id. `after` is the (last_seen_at, id) of the last user on the previous page.
    """

    q: str | None = None
    emotion: str | None = None
    intent: str | None = None
    seen_after: datetime | None = None
    seen_before: datetime | None = None
    limit: int = 20
    after: tuple[datetime, str] | None = None


@dataclass(frozen=True, slots=True)
class UserSummary:
    user: UserRecord
    current_emotion: str | None
    recent_intent: str | None
    turn_count: int


@dataclass(frozen=True, slots=True)
class SearchPage:
    items: list[UserSummary]
    next: tuple[datetime, str] | None  # pass as `after` for the next page; None: last page


@dataclass(frozen=True, slots=True)
class IntentCount:
    label: str
    count: int


@dataclass(frozen=True, slots=True)
class EmotionPoint:
    at: datetime
    turn_id: str
    emotion: str
    scores: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class ContributionPoint:
    at: datetime
    reason: str
    shares: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ConversationTurns:
    conversation: ConversationRecord
    turns: list[TurnRecord]


@dataclass(frozen=True, slots=True)
class Neighbour:
    user_id: str
    external_id: str
    name: str | None
    similarity: float


@dataclass(frozen=True, slots=True)
class ProfileView:
    user: UserRecord
    profile: ProfileRecord | None
    current_emotion: str | None
    recent_intent: str | None
    top_intents: list[IntentCount]
    emotion_trend: list[EmotionPoint]  # oldest first
    contribution_trend: list[ContributionPoint]  # oldest first
    events: list[EventRecord]  # newest first
    conversations: list[ConversationTurns]  # newest first, turns oldest first


@dataclass(frozen=True, slots=True)
class LabelCorrectionRecord:
    """An operator's relabel of one user turn; `text` is the (redacted) turn text."""

    id: int
    turn_id: str
    operator_id: str | None
    field: LabelField
    old_value: str | None
    new_value: str
    created_at: datetime
    text: str


@dataclass(frozen=True, slots=True)
class AuditRecord:
    id: int
    at: datetime
    operator_id: str | None
    action: str
    subject_user_id: str | None
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class UserExport:
    """Everything held about one user."""

    user: UserRecord
    profile: ProfileRecord | None
    snapshots: list[SnapshotRecord]
    conversations: list[ConversationRecord]
    turns: list[TurnRecord]
    events: list[EventRecord]
    corrections: list[LabelCorrectionRecord]
    audit: list[AuditRecord]


@dataclass(frozen=True, slots=True)
class EraseReport:
    user_id: str
    rows: dict[str, int] = field(default_factory=dict)  # table -> rows deleted
