"""The operator side of the store: operators, search, profile views, corrections, audit, erasure.

It shares the `Store`'s engine and transactions; like the store, it returns frozen dataclasses.
"""

from __future__ import annotations

import asyncio
import heapq
import re
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
from sqlalchemy import ColumnElement, Select, and_, delete, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from profiles.errors import Conflict, NotFound
from profiles.models import (
    AuditEntry,
    BehaviourEvent,
    Conversation,
    LabelCorrection,
    Operator,
    Profile,
    ProfileSnapshot,
    SessionFrame,
    Turn,
    User,
    utcnow,
)
from profiles.operator_records import (
    AuditRecord,
    ContributionPoint,
    ConversationTurns,
    EmotionPoint,
    EraseReport,
    IntentCount,
    LabelCorrectionRecord,
    LabelField,
    Neighbour,
    OperatorRecord,
    OperatorRole,
    ProfileView,
    SearchPage,
    UserExport,
    UserQuery,
    UserSummary,
)
from profiles.records import TurnRecord
from profiles.rows import (
    conversation_record,
    event_record,
    from_bytes,
    profile_record,
    snapshot_record,
    turn_record,
    user_record,
)
from profiles.store import Store

_USER_ID = re.compile(r"^[0-9a-f]{32}$")
# Above every character: `key >= p AND key < p + TOP` is "starts with p" under binary order.
_TOP = "\U0010ffff"


def _operator(row: Operator) -> OperatorRecord:
    return OperatorRecord(
        id=row.id,
        name=row.name,
        role=cast(OperatorRole, row.role),
        key_hash=row.key_hash,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


def _audit(row: AuditEntry) -> AuditRecord:
    return AuditRecord(
        id=row.id,
        at=row.at,
        operator_id=row.operator_id,
        action=row.action,
        subject_user_id=row.subject_user_id,
        detail=dict(row.detail or {}),
    )


def _correction(row: LabelCorrection, text: str) -> LabelCorrectionRecord:
    return LabelCorrectionRecord(
        id=row.id,
        turn_id=row.turn_id,
        operator_id=row.operator_id,
        field=cast(LabelField, row.field),
        old_value=row.old_value,
        new_value=row.new_value,
        created_at=row.created_at,
        text=text,
    )


def _like_prefix(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def top_k_cosine(
    target: np.ndarray[Any, Any], matrix: np.ndarray[Any, Any], k: int
) -> list[tuple[int, float]]:
    """The rows of `matrix` nearest `target` by cosine: [(row, similarity)], best first."""
    if matrix.shape[0] == 0 or k <= 0:
        return []
    norms = np.linalg.norm(matrix, axis=1)
    norms[norms == 0] = 1.0
    t_norm = float(np.linalg.norm(target)) or 1.0
    sims = (matrix @ target) / (norms * t_norm)
    k = min(k, sims.shape[0])
    idx = np.argpartition(-sims, k - 1)[:k]
    idx = idx[np.argsort(-sims[idx])]
    return [(int(i), float(sims[i])) for i in idx]


class OperatorStore:
    """Reads and writes for the operator console, on top of a `Store`'s engine."""

    def __init__(self, store: Store) -> None:
        self._store = store

    @property
    def backend(self) -> str:
        return self._store.backend

    def _tx(self) -> Any:
        return self._store._tx()

    # operators

    async def create_operator(
        self, operator_id: str, name: str, role: OperatorRole, key_hash: str
    ) -> OperatorRecord:
        """A new operator; the id is chosen by the caller because it is part of the key."""
        try:
            async with self._tx() as session:
                row = Operator(
                    id=operator_id, name=name, role=role, key_hash=key_hash, created_at=utcnow()
                )
                session.add(row)
                await session.flush()
                return _operator(row)
        except IntegrityError:
            raise Conflict(f"an operator named {name!r} exists already") from None

    async def get_operator(self, operator_id: str) -> OperatorRecord | None:
        async with self._tx() as session:
            row = await session.get(Operator, operator_id)
            return None if row is None else _operator(row)

    async def list_operators(self) -> list[OperatorRecord]:
        async with self._tx() as session:
            rows = await session.scalars(select(Operator).order_by(Operator.name))
            return [_operator(r) for r in rows]

    async def revoke_operator(self, name: str) -> OperatorRecord | None:
        """Revoke by name; None when there is no such operator. Revoking twice keeps the date."""
        async with self._tx() as session:
            row = await session.scalar(select(Operator).where(Operator.name == name))
            if row is None:
                return None
            if row.revoked_at is None:
                row.revoked_at = utcnow()
            return _operator(row)

    # search

    def _prefix(self, column: Any, value: str) -> ColumnElement[bool]:
        if self.backend == "postgresql":
            # text_pattern_ops indexes serve LIKE 'p%' whatever the database collation.
            return cast(ColumnElement[bool], column.like(_like_prefix(value), escape="\\"))
        return and_(column >= value, column < value + _TOP)

    def search_statement(self, query: UserQuery) -> Select[User, int]:
        """The SELECT behind `search_users` (benchmarks print its plan)."""
        stmt = (
            select(User, Profile.turn_count)
            .outerjoin(Profile, Profile.user_id == User.id)
            .order_by(User.last_seen_at.desc(), User.id.desc())
            .limit(query.limit + 1)
        )
        if query.q:
            text = query.q.strip()
            matches = [
                self._prefix(User.name_key, text.casefold()),
                self._prefix(User.external_id, text),
            ]
            if _USER_ID.match(text):
                matches.append(User.id == text)
            stmt = stmt.where(or_(*matches))
        if query.emotion is not None:
            stmt = stmt.where(User.current_emotion == query.emotion)
        if query.intent is not None:
            stmt = stmt.where(User.recent_intent == query.intent)
        if query.seen_after is not None:
            stmt = stmt.where(User.last_seen_at >= query.seen_after)
        if query.seen_before is not None:
            stmt = stmt.where(User.last_seen_at < query.seen_before)
        if query.after is not None:
            at, user_id = query.after
            stmt = stmt.where(
                or_(User.last_seen_at < at, and_(User.last_seen_at == at, User.id < user_id))
            )
        return stmt

    async def search_users(self, query: UserQuery) -> SearchPage:
        stmt = self.search_statement(query)
        async with self._tx() as session:
            rows = (await session.execute(stmt)).all()
        items = [
            UserSummary(
                user_record(user), user.current_emotion, user.recent_intent, int(turns or 0)
            )
            for user, turns in rows[: query.limit]
        ]
        more = len(rows) > query.limit and items
        last = items[-1].user if items else None
        return SearchPage(items, (last.last_seen_at, last.id) if more and last else None)

    # the profile view

    async def profile_view(
        self, user_id: str, *, turns_per_conversation: int = 50, conversations: int = 5
    ) -> ProfileView | None:
        async with self._tx() as session:
            user = await session.get(User, user_id)
            if user is None:
                return None
            profile = await session.get(Profile, user_id)
            intents = (
                await session.execute(
                    select(Turn.intent, func.count())
                    .where(Turn.user_id == user_id, Turn.role == "user", Turn.intent.is_not(None))
                    .group_by(Turn.intent)
                    .order_by(func.count().desc(), Turn.intent)
                    .limit(10)
                )
            ).all()
            emotion_rows = await session.scalars(
                select(Turn)
                .where(Turn.user_id == user_id, Turn.role == "user", Turn.emotion.is_not(None))
                .order_by(Turn.created_at.desc(), Turn.id.desc())
                .limit(100)
            )
            emotions = [
                EmotionPoint(t.created_at, t.id, str(t.emotion), t.emotion_scores)
                for t in emotion_rows
            ][::-1]
            snapshot_rows = await session.scalars(
                select(ProfileSnapshot)
                .where(ProfileSnapshot.user_id == user_id)
                .order_by(ProfileSnapshot.id.desc())
                .limit(100)
            )
            contributions = [
                ContributionPoint(s.created_at, s.reason, dict(s.modality_contributions or {}))
                for s in snapshot_rows
            ][::-1]
            event_rows = await session.scalars(
                select(BehaviourEvent)
                .where(BehaviourEvent.user_id == user_id)
                .order_by(BehaviourEvent.occurred_at.desc(), BehaviourEvent.id.desc())
                .limit(20)
            )
            events = [event_record(e) for e in event_rows]
            conversation_rows = list(
                await session.scalars(
                    select(Conversation)
                    .where(Conversation.user_id == user_id)
                    .order_by(Conversation.started_at.desc(), Conversation.id.desc())
                    .limit(conversations)
                )
            )
            recent: list[ConversationTurns] = []
            for conversation in conversation_rows:
                turn_rows = await session.scalars(
                    select(Turn)
                    .where(Turn.conversation_id == conversation.id)
                    .order_by(Turn.created_at.desc(), Turn.id.desc())
                    .limit(turns_per_conversation)
                )
                turns = [turn_record(t) for t in turn_rows][::-1]
                recent.append(ConversationTurns(conversation_record(conversation), turns))
            return ProfileView(
                user=user_record(user),
                profile=None if profile is None else profile_record(profile),
                current_emotion=user.current_emotion,
                recent_intent=user.recent_intent,
                top_intents=[IntentCount(str(label), int(n)) for label, n in intents],
                emotion_trend=emotions,
                contribution_trend=contributions,
                events=events,
                conversations=recent,
            )

    async def neighbours(self, user_id: str, *, k: int = 5, batch: int = 8192) -> list[Neighbour]:
        """The k users whose profile vectors are most similar (cosine), same model version.

        A brute-force scan: vectors are read `batch` profiles at a time (keyset on user id)
        and scored in a worker thread, so the event loop is never blocked by the arithmetic.
        """
        async with self._tx() as session:
            own = await session.get(Profile, user_id)
            if own is None:
                return []
            target = from_bytes(own.vector)
            version, dim = own.model_version, own.dim
        best: list[tuple[float, str]] = []  # a min-heap of (similarity, user id)
        after = ""
        while True:
            async with self._tx() as session:
                rows = (
                    await session.execute(
                        select(Profile.user_id, Profile.vector)
                        .where(
                            Profile.model_version == version,
                            Profile.dim == dim,
                            Profile.user_id > after,
                        )
                        .order_by(Profile.user_id)
                        .limit(batch)
                    )
                ).all()
            if not rows:
                break
            after = rows[-1][0]
            ids = [r[0] for r in rows]
            blobs = [r[1] for r in rows]
            scored = await asyncio.to_thread(_score_batch, target, blobs, k + 1)
            for index, similarity in scored:
                if ids[index] == user_id:
                    continue
                item = (similarity, ids[index])
                if len(best) < k:
                    heapq.heappush(best, item)
                elif item > best[0]:
                    heapq.heapreplace(best, item)
            if len(rows) < batch:
                break
        ranked = sorted(best, reverse=True)
        if not ranked:
            return []
        async with self._tx() as session:
            users = {
                u.id: u
                for u in await session.scalars(
                    select(User).where(User.id.in_([uid for _, uid in ranked]))
                )
            }
        return [
            Neighbour(uid, users[uid].external_id, users[uid].name, round(sim, 6))
            for sim, uid in ranked
            if uid in users
        ]

    # live-session support, corrections

    async def add_operator_turn(self, conversation_id: str, text: str) -> TurnRecord:
        async with self._tx() as session:
            conversation = await session.get(Conversation, conversation_id)
            if conversation is None:
                raise NotFound(conversation_id)
            row = Turn(
                conversation_id=conversation_id,
                user_id=conversation.user_id,
                role="operator",
                text=text,
                created_at=utcnow(),
            )
            session.add(row)
            await session.flush()
            return turn_record(row)

    async def get_turn(self, turn_id: str) -> TurnRecord | None:
        async with self._tx() as session:
            row = await session.get(Turn, turn_id)
            return None if row is None else turn_record(row)

    async def relabel_turn(
        self,
        turn_id: str,
        operator_id: str | None,
        *,
        intent: str | None = None,
        emotion: str | None = None,
    ) -> TurnRecord:
        """Correct a user turn's labels, keeping the old ones in label_corrections."""
        async with self._tx() as session:
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
        async with self._tx() as session:
            stmt = (
                select(LabelCorrection, Turn.text)
                .join(Turn, Turn.id == LabelCorrection.turn_id)
                .where(LabelCorrection.id > after_id)
                .order_by(LabelCorrection.id)
                .limit(limit)
            )
            rows = (await session.execute(stmt)).all()
        records = [_correction(c, text) for c, text in rows]
        if not latest_only:
            return records
        latest: dict[tuple[str, str], LabelCorrectionRecord] = {}
        for record in records:
            latest[(record.turn_id, record.field)] = record
        return sorted(latest.values(), key=lambda r: r.id)

    # audit

    async def audit(
        self,
        operator_id: str | None,
        action: str,
        subject_user_id: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Append to the audit log. `detail` must hold no content (no text, names or ids)."""
        async with self._tx() as session:
            session.add(
                AuditEntry(
                    at=utcnow(),
                    operator_id=operator_id,
                    action=action,
                    subject_user_id=subject_user_id,
                    detail=dict(detail or {}),
                )
            )

    async def list_audit(
        self,
        *,
        subject_user_id: str | None = None,
        operator_id: str | None = None,
        limit: int = 1000,
    ) -> list[AuditRecord]:
        stmt = select(AuditEntry).order_by(AuditEntry.id).limit(limit)
        if subject_user_id is not None:
            stmt = stmt.where(AuditEntry.subject_user_id == subject_user_id)
        if operator_id is not None:
            stmt = stmt.where(AuditEntry.operator_id == operator_id)
        async with self._tx() as session:
            return [_audit(r) for r in await session.scalars(stmt)]

    # export and erasure

    async def export_user(self, user_id: str) -> UserExport | None:
        async with self._tx() as session:
            user = await session.get(User, user_id)
            if user is None:
                return None
            profile = await session.get(Profile, user_id)
            snapshots = [
                snapshot_record(s)
                for s in await session.scalars(
                    select(ProfileSnapshot)
                    .where(ProfileSnapshot.user_id == user_id)
                    .order_by(ProfileSnapshot.id)
                )
            ]
            conversations = [
                conversation_record(c)
                for c in await session.scalars(
                    select(Conversation)
                    .where(Conversation.user_id == user_id)
                    .order_by(Conversation.started_at, Conversation.id)
                )
            ]
            turns = [
                turn_record(t)
                for t in await session.scalars(
                    select(Turn).where(Turn.user_id == user_id).order_by(Turn.created_at, Turn.id)
                )
            ]
            events = [
                event_record(e)
                for e in await session.scalars(
                    select(BehaviourEvent)
                    .where(BehaviourEvent.user_id == user_id)
                    .order_by(BehaviourEvent.occurred_at, BehaviourEvent.id)
                )
            ]
            corrections = [
                _correction(c, text)
                for c, text in (
                    await session.execute(
                        select(LabelCorrection, Turn.text)
                        .join(Turn, Turn.id == LabelCorrection.turn_id)
                        .where(Turn.user_id == user_id)
                        .order_by(LabelCorrection.id)
                    )
                ).all()
            ]
            audit = [
                _audit(a)
                for a in await session.scalars(
                    select(AuditEntry)
                    .where(AuditEntry.subject_user_id == user_id)
                    .order_by(AuditEntry.id)
                )
            ]
            return UserExport(
                user=user_record(user),
                profile=None if profile is None else profile_record(profile),
                snapshots=snapshots,
                conversations=conversations,
                turns=turns,
                events=events,
                corrections=corrections,
                audit=audit,
            )

    async def erase_user(self, user_id: str, operator_id: str | None) -> EraseReport | None:
        """Delete every row about the user, in one transaction with its audit entry.

        The audit log keeps entries about the user (action, operator, time, counts): they
        hold no content. None when there is no such user.
        """
        async with self._tx() as session:
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
            session.add(
                AuditEntry(
                    at=utcnow(),
                    operator_id=operator_id,
                    action="profile.erase",
                    subject_user_id=user_id,
                    detail={"rows": counts},
                )
            )
            return EraseReport(user_id, counts)


def _score_batch(
    target: np.ndarray[Any, Any], blobs: list[bytes], k: int
) -> list[tuple[int, float]]:
    dim = target.shape[0]
    matrix = np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(blobs), dim)
    return top_k_cosine(target.astype(np.float32), matrix.astype(np.float32), k)


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
