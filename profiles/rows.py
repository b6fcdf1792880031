"""ORM rows to the plain records the store returns, and vectors to and from their column."""

from __future__ import annotations

from typing import cast

import numpy as np

from profiles.models import BehaviourEvent, Conversation, Profile, ProfileSnapshot, Turn, User
from profiles.records import (
    Channel,
    ConversationRecord,
    ConversationStatus,
    EventRecord,
    ProfileRecord,
    Role,
    SnapshotRecord,
    TurnRecord,
    UserRecord,
    Vector,
)

__all__ = [
    "conversation_record",
    "event_record",
    "from_bytes",
    "profile_record",
    "snapshot_record",
    "to_bytes",
    "turn_record",
    "user_record",
]


def to_bytes(vector: Vector) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def from_bytes(blob: bytes) -> Vector:
    return np.frombuffer(blob, dtype="<f4").astype(np.float32)


def user_record(row: User) -> UserRecord:
    return UserRecord(
        id=row.id,
        tenant=row.tenant,
        external_id=row.external_id,
        name=row.name,
        locale=row.locale,
        created_at=row.created_at,
        last_seen_at=row.last_seen_at,
    )


def profile_record(row: Profile) -> ProfileRecord:
    return ProfileRecord(
        user_id=row.user_id,
        vector=from_bytes(row.vector),
        model_version=row.model_version,
        turn_count=row.turn_count,
        event_count=row.event_count,
        emotion_state=row.emotion_state,
        intent_histogram=dict(row.intent_histogram or {}),
        modality_contributions=dict(row.modality_contributions or {}),
        updated_at=row.updated_at,
    )


def conversation_record(row: Conversation) -> ConversationRecord:
    return ConversationRecord(
        id=row.id,
        user_id=row.user_id,
        channel=cast(Channel, row.channel),
        status=cast(ConversationStatus, row.status),
        started_at=row.started_at,
        ended_at=row.ended_at,
    )


def turn_record(row: Turn) -> TurnRecord:
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


def event_record(row: BehaviourEvent) -> EventRecord:
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


def snapshot_record(row: ProfileSnapshot) -> SnapshotRecord:
    return SnapshotRecord(
        id=row.id,
        user_id=row.user_id,
        vector=from_bytes(row.vector),
        model_version=row.model_version,
        reason=row.reason,
        turn_id=row.turn_id,
        created_at=row.created_at,
        modality_contributions=dict(row.modality_contributions or {}),
    )
