"""An operator's part in a conversation: the turns they write, and their corrections of the
models' labels on the user's turns (kept for the intent and emotion trainers)."""

from __future__ import annotations

from typing import cast

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from profiles.errors import NotFound
from profiles.models import LabelCorrection, Profile, Turn, User, utcnow
from profiles.operator_records import LabelCorrectionRecord, LabelField
from profiles.records import TurnRecord
from profiles.rows import correction_record, turn_record
from profiles.transactions import Transactions
from profiles.turn_writes import InsertTurn

__all__ = ["OperatorTurns"]


class OperatorTurns:
    """Operator turns and label corrections; part of `OperatorStore`."""

    _transactions: Transactions

    async def add_operator_turn(self, conversation_id: str, text: str) -> TurnRecord:
        """An operator's turn, said now: the conversation's next position."""
        insert = InsertTurn(conversation_id, None, "operator", text, utcnow())
        return cast(TurnRecord, await self._transactions.run(insert))

    async def get_turn(self, turn_id: str) -> TurnRecord | None:
        return await self._transactions.get(Turn, turn_id, turn_record)

    async def relabel_turn(
        self,
        turn_id: str,
        operator_id: str | None,
        *,
        intent: str | None = None,
        emotion: str | None = None,
    ) -> TurnRecord:
        """Correct a user turn's labels, keeping the old ones in label_corrections."""
        async with self._transactions.tx() as session:
            row = await session.get(Turn, turn_id)
            if row is None or row.role != "user":
                raise NotFound(turn_id)
            now = utcnow()
            changes: list[tuple[LabelField, str | None, str]] = []
            if intent is not None:
                changes.append(("intent", row.intent, intent))
                row.intent = intent
            if emotion is not None:
                changes.append(("emotion", row.emotion, emotion))
                row.emotion = emotion
            for name, old, new in changes:
                session.add(
                    LabelCorrection(
                        turn_id=turn_id,
                        operator_id=operator_id,
                        field=name,
                        old_value=old,
                        new_value=new,
                        created_at=now,
                    )
                )
            await session.flush()
            await _refresh_profile_labels(session, row.user_id, changes)
            return turn_record(row)

    async def list_label_corrections(
        self, *, latest_only: bool = True, after_id: int = 0, limit: int = 100_000
    ) -> list[LabelCorrectionRecord]:
        """Operators' relabels with the turn text, for the intent and emotion trainers.

        With `latest_only`, one correction per (turn, field): the last one made.
        """
        async with self._transactions.tx() as session:
            stmt = (
                select(LabelCorrection, Turn.text)
                .join(Turn, Turn.id == LabelCorrection.turn_id)
                .where(LabelCorrection.id > after_id)
                .order_by(LabelCorrection.id)
                .limit(limit)
            )
            rows = (await session.execute(stmt)).all()
        records = [correction_record(c, text=text) for c, text in rows]
        if not latest_only:
            return records
        latest: dict[tuple[str, str], LabelCorrectionRecord] = {}
        for record in records:
            latest[(record.turn_id, record.field)] = record
        return sorted(latest.values(), key=lambda r: r.id)


async def _refresh_profile_labels(
    session: AsyncSession, user_id: str, changes: list[tuple[LabelField, str | None, str]]
) -> None:
    """After a relabel: intent counts move, and current emotion / recent intent follow the
    user's latest labelled turn."""
    user = await session.get(User, user_id)
    profile = await session.get(Profile, user_id)
    if user is None:
        return
    histogram = dict(profile.intent_histogram or {}) if profile is not None else {}
    for name, old, new in changes:
        if name != "intent":
            continue
        if old is not None and int(histogram.get(old, 0)) > 0:
            histogram[old] = int(histogram[old]) - 1
            if histogram[old] == 0:
                del histogram[old]
        histogram[new] = int(histogram.get(new, 0)) + 1
    if profile is not None:
        profile.intent_histogram = histogram
    latest_emotion = await session.scalar(
        select(Turn.emotion)
        .where(Turn.user_id == user_id, Turn.role == "user", Turn.emotion.is_not(None))
        .order_by(Turn.created_at.desc(), Turn.id.desc())
        .limit(1)
    )
    latest_intent = await session.scalar(
        select(Turn.intent)
        .where(Turn.user_id == user_id, Turn.role == "user", Turn.intent.is_not(None))
        .order_by(Turn.created_at.desc(), Turn.id.desc())
        .limit(1)
    )
    user.current_emotion = latest_emotion
    user.recent_intent = latest_intent
