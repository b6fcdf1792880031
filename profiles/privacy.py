"""A user's data on request: everything held about them (export), or none of it (erasure)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, or_, select

from profiles.accounts import audit_entry
from profiles.models import (
    AuditEntry,
    BehaviourEvent,
    Conversation,
    LabelCorrection,
    Profile,
    ProfileSnapshot,
    SessionFrame,
    Turn,
    User,
)
from profiles.operator_records import EraseReport, UserExport
from profiles.rows import (
    audit_record,
    conversation_record,
    correction_record,
    event_record,
    or_none,
    profile_record,
    records,
    snapshot_record,
    turn_record,
    user_record,
)
from profiles.transactions import Transactions

__all__ = ["Privacy"]


class Privacy:
    """Export and erasure; part of `OperatorStore`."""

    _transactions: Transactions

    async def export_user(self, user_id: str) -> UserExport | None:
        async with self._transactions.tx() as session:
            user = await session.get(User, user_id)
            if user is None:
                return None
            profile = await session.get(Profile, user_id)
            snapshots = await records(
                session,
                select(ProfileSnapshot)
                .where(ProfileSnapshot.user_id == user_id)
                .order_by(ProfileSnapshot.id),
                snapshot_record,
            )
            conversations = await records(
                session,
                select(Conversation)
                .where(Conversation.user_id == user_id)
                .order_by(Conversation.started_at, Conversation.id),
                conversation_record,
            )
            # Conversation by conversation, each in the order it was said.
            turns = await records(
                session,
                select(Turn)
                .join(Conversation, Conversation.id == Turn.conversation_id)
                .where(Turn.user_id == user_id)
                .order_by(Conversation.started_at, Conversation.id, Turn.position),
                turn_record,
            )
            events = await records(
                session,
                select(BehaviourEvent)
                .where(BehaviourEvent.user_id == user_id)
                .order_by(BehaviourEvent.occurred_at, BehaviourEvent.id),
                event_record,
            )
            corrections = await session.execute(
                select(LabelCorrection, Turn.text)
                .join(Turn, Turn.id == LabelCorrection.turn_id)
                .where(Turn.user_id == user_id)
                .order_by(LabelCorrection.id)
            )
            audit = await records(
                session,
                select(AuditEntry)
                .where(AuditEntry.subject_user_id == user_id)
                .order_by(AuditEntry.id),
                audit_record,
            )
            return UserExport(
                user=user_record(user),
                profile=or_none(profile_record, profile),
                snapshots=snapshots,
                conversations=conversations,
                turns=turns,
                events=events,
                corrections=[correction_record(c, text=text) for c, text in corrections],
                audit=audit,
            )

    async def erase_user(self, user_id: str, operator_id: str | None) -> EraseReport | None:
        """Delete every row about the user, in one transaction with its audit entry.

        The audit log keeps entries about the user (action, operator, time, counts): they
        hold no content. None when there is no such user.
        """
        async with self._transactions.tx() as session:
            if await session.get(User, user_id) is None:
                return None
            turn_ids = select(Turn.id).where(Turn.user_id == user_id).scalar_subquery()
            conversation_ids = (
                select(Conversation.id).where(Conversation.user_id == user_id).scalar_subquery()
            )
            steps: Sequence[tuple[str, Any]] = (
                (
                    "label_corrections",
                    delete(LabelCorrection).where(LabelCorrection.turn_id.in_(turn_ids)),
                ),
                (
                    "behaviour_events",
                    delete(BehaviourEvent).where(
                        or_(
                            BehaviourEvent.user_id == user_id,
                            BehaviourEvent.conversation_id.in_(conversation_ids),
                        )
                    ),
                ),
                (
                    "turns",
                    delete(Turn).where(
                        or_(Turn.user_id == user_id, Turn.conversation_id.in_(conversation_ids))
                    ),
                ),
                (
                    "profile_snapshots",
                    delete(ProfileSnapshot).where(ProfileSnapshot.user_id == user_id),
                ),
                ("profiles", delete(Profile).where(Profile.user_id == user_id)),
                (
                    "session_frames",
                    delete(SessionFrame).where(SessionFrame.conversation_id.in_(conversation_ids)),
                ),
                ("conversations", delete(Conversation).where(Conversation.user_id == user_id)),
                ("users", delete(User).where(User.id == user_id)),
            )
            counts: dict[str, int] = {}
            for table, statement in steps:
                result = await session.execute(statement)
                counts[table] = int(getattr(result, "rowcount", 0) or 0)
            session.add(audit_entry(operator_id, "profile.erase", user_id, {"rows": counts}))
            return EraseReport(user_id, counts)
