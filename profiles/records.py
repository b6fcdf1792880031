"""Plain frozen dataclasses that the store returns; callers never see ORM rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

Channel = Literal["chat", "voice"]
ConversationStatus = Literal["bot", "operator", "closed"]
Role = Literal["user", "assistant", "operator"]
Vector = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class UserRecord:
    id: str
    tenant: str
    external_id: str
    name: str | None
    locale: str | None
    created_at: datetime
    last_seen_at: datetime


@dataclass(frozen=True, slots=True)
class ProfileRecord:
    user_id: str
    vector: Vector
    model_version: str
    turn_count: int
    event_count: int
    emotion_state: dict[str, Any] | None
    intent_histogram: dict[str, Any]
    modality_contributions: dict[str, Any]
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class SnapshotRecord:
    id: int
    user_id: str
    vector: Vector
    model_version: str
    reason: str
    turn_id: str | None
    created_at: datetime
    modality_contributions: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ConversationRecord:
    id: str
    user_id: str
    channel: Channel
    status: ConversationStatus
    started_at: datetime
    ended_at: datetime | None
    dialogue_state: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class TurnRecord:
    id: str
    conversation_id: str
    user_id: str
    role: Role
    client_id: str | None
    text: str
    intent: str | None
    intent_confidence: float | None
    emotion: str | None
    emotion_scores: dict[str, Any] | None
    latency_ms: float | None
    created_at: datetime  # when it was said
    position: int  # its place in the conversation (profiles.models.Turn)


@dataclass(frozen=True, slots=True)
class FinishedTurn:
    """What `Store.finish_turn` wrote: the assistant's reply turn and the profile as saved
    (None when the turn changed no profile and the user has none)."""

    reply: TurnRecord
    profile: ProfileRecord | None


@dataclass(frozen=True, slots=True)
class NewEvent:
    """A behaviour event as received; client_id makes storing it idempotent."""

    client_id: str
    name: str
    occurred_at: datetime
    props: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EventRecord:
    id: int
    user_id: str
    conversation_id: str | None
    client_id: str
    name: str
    props: dict[str, Any]
    occurred_at: datetime
    received_at: datetime


@dataclass(frozen=True, slots=True)
class ProfileUpdate:
    """What a turn changes in a user's profile, written in the turn's transaction."""

    vector: Vector
    model_version: str
    reason: str
    modality_contributions: dict[str, Any] = field(default_factory=dict)
    turns: int = 0
    events: int = 0


@dataclass(frozen=True, slots=True)
class TurnLabels:
    intent: str | None = None
    intent_confidence: float | None = None
    emotion: str | None = None
    emotion_scores: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class StoredFrame:
    """One server frame of a chat session (its conversation), as sent on the wire."""

    conversation_id: str
    seq: int
    body: str
