"""The store's records as the JSON the /operator protocol sends. Pure functions, no I/O.

Absent values stay `null` here (unlike /chat frames), so that a console can show "—" for
an emotion or intent that no model has produced yet.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from assistant.chat.session import LiveTurn
from profiles import (
    AuditRecord,
    ConversationRecord,
    EventRecord,
    LabelCorrectionRecord,
    Neighbour,
    OperatorRecord,
    ProfileView,
    SnapshotRecord,
    TurnRecord,
    UserExport,
    UserRecord,
    UserSummary,
)


def when(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def user_json(user: UserRecord) -> dict[str, Any]:
    return {
        "id": user.id,
        "tenant": user.tenant,
        "external_id": user.external_id,
        "name": user.name,
        "locale": user.locale,
        "created_at": when(user.created_at),
        "last_seen_at": when(user.last_seen_at),
    }


def summary_json(item: UserSummary) -> dict[str, Any]:
    return {
        **user_json(item.user),
        "emotion": item.current_emotion,
        "intent": item.recent_intent,
        "turns": item.turn_count,
    }


def live_session_json(live: dict[str, Any], stored: UserSummary | None) -> dict[str, Any]:
    """A live session's summary with its user's stored emotion and intent, so that the live
    list, search and the profile view agree: a session only knows the labels of its own
    replies, not a label an operator corrected or one given to a turn in another session."""
    return {
        **live,
        "emotion": stored.current_emotion if stored else None,
        "intent": stored.recent_intent if stored else None,
    }


def live_turn_json(turn: LiveTurn) -> dict[str, Any]:
    """A turn as a watching operator sees it the moment it happens."""
    return {
        "id": turn.turn_id,
        "role": turn.role,
        "text": turn.text,
        "intent": turn.intent,
        "emotion": turn.emotion,
        "at": when(turn.at),
        "turn": turn.reading,
        "suggestions": list(turn.suggestions) if turn.suggestions is not None else None,
    }


def turn_json(turn: TurnRecord) -> dict[str, Any]:
    return {
        "id": turn.id,
        "conversation_id": turn.conversation_id,
        "role": turn.role,
        "text": turn.text,
        "intent": turn.intent,
        "intent_confidence": turn.intent_confidence,
        "emotion": turn.emotion,
        "emotion_scores": turn.emotion_scores,
        "latency_ms": turn.latency_ms,
        "at": when(turn.created_at),
        "position": turn.position,
    }


def conversation_json(conversation: ConversationRecord) -> dict[str, Any]:
    return {
        "id": conversation.id,
        "channel": conversation.channel,
        "status": conversation.status,
        "started_at": when(conversation.started_at),
        "ended_at": when(conversation.ended_at),
        "dialogue_state": conversation.dialogue_state,
    }


def event_json(event: EventRecord) -> dict[str, Any]:
    return {
        "id": event.client_id,
        "name": event.name,
        "props": event.props,
        "at": when(event.occurred_at),
        "received_at": when(event.received_at),
        "conversation_id": event.conversation_id,
    }


def neighbour_json(neighbour: Neighbour) -> dict[str, Any]:
    return {
        "user_id": neighbour.user_id,
        "external_id": neighbour.external_id,
        "name": neighbour.name,
        "similarity": neighbour.similarity,
    }


def profile_view_json(view: ProfileView, neighbours: list[Neighbour]) -> dict[str, Any]:
    profile = view.profile
    shares = dict(profile.modality_contributions) if profile is not None else {}
    return {
        "user": user_json(view.user),
        "profile": None
        if profile is None
        else {
            "model_version": profile.model_version,
            "dim": int(profile.vector.shape[0]),
            "turn_count": profile.turn_count,
            "event_count": profile.event_count,
            "updated_at": when(profile.updated_at),
        },
        "emotion": view.current_emotion,
        "intent": view.recent_intent,
        "top_intents": [{"label": i.label, "count": i.count} for i in view.top_intents],
        "emotion_trend": [
            {"at": when(p.at), "turn_id": p.turn_id, "emotion": p.emotion, "scores": p.scores}
            for p in view.emotion_trend
        ],
        "modality_contributions": {
            key: float(shares.get(key, 0.0)) for key in ("text", "speech", "behaviour")
        },
        "contribution_trend": [
            {"at": when(p.at), "reason": p.reason, "shares": p.shares}
            for p in view.contribution_trend
        ],
        "events": [event_json(e) for e in view.events],
        "conversations": [
            {**conversation_json(c.conversation), "turns": [turn_json(t) for t in c.turns]}
            for c in view.conversations
        ],
        "neighbours": [neighbour_json(n) for n in neighbours],
    }


def operator_json(operator: OperatorRecord) -> dict[str, Any]:
    return {
        "id": operator.id,
        "name": operator.name,
        "role": operator.role,
        "created_at": when(operator.created_at),
        "revoked_at": when(operator.revoked_at),
    }


def _snapshot_json(snapshot: SnapshotRecord) -> dict[str, Any]:
    return {
        "id": snapshot.id,
        "reason": snapshot.reason,
        "model_version": snapshot.model_version,
        "turn_id": snapshot.turn_id,
        "modality_contributions": snapshot.modality_contributions,
        "vector": [round(float(x), 6) for x in snapshot.vector],
        "at": when(snapshot.created_at),
    }


def _correction_json(correction: LabelCorrectionRecord) -> dict[str, Any]:
    return {
        "turn_id": correction.turn_id,
        "field": correction.field,
        "old_value": correction.old_value,
        "new_value": correction.new_value,
        "operator_id": correction.operator_id,
        "at": when(correction.created_at),
    }


def _audit_json(entry: AuditRecord) -> dict[str, Any]:
    return {
        "at": when(entry.at),
        "operator_id": entry.operator_id,
        "action": entry.action,
        "detail": entry.detail,
    }


def export_json(data: UserExport) -> dict[str, Any]:
    profile = data.profile
    return {
        "user": user_json(data.user),
        "profile": None
        if profile is None
        else {
            "model_version": profile.model_version,
            "vector": [round(float(x), 6) for x in profile.vector],
            "turn_count": profile.turn_count,
            "event_count": profile.event_count,
            "emotion_state": profile.emotion_state,
            "intent_histogram": profile.intent_histogram,
            "modality_contributions": profile.modality_contributions,
            "updated_at": when(profile.updated_at),
        },
        "profile_snapshots": [_snapshot_json(s) for s in data.snapshots],
        "conversations": [conversation_json(c) for c in data.conversations],
        "turns": [turn_json(t) for t in data.turns],
        "behaviour_events": [event_json(e) for e in data.events],
        "label_corrections": [_correction_json(c) for c in data.corrections],
        "audit_log": [_audit_json(a) for a in data.audit],
    }
