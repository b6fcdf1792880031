"""What an operator sees of one user: the profile view and the users with similar profiles."""

from __future__ import annotations

import asyncio

from sqlalchemy import func, select

from profiles.models import BehaviourEvent, Conversation, Profile, ProfileSnapshot, Turn, User
from profiles.operator_records import (
    ContributionPoint,
    ConversationTurns,
    EmotionPoint,
    IntentCount,
    Neighbour,
    ProfileView,
)
from profiles.rows import (
    conversation_record,
    event_record,
    from_bytes,
    or_none,
    profile_record,
    records,
    turn_record,
    user_record,
)
from profiles.similarity import Nearest, score_blobs
from profiles.transactions import Transactions

__all__ = ["ProfileViews"]


class ProfileViews:
    """A user's profile view and neighbours; part of `OperatorStore`."""

    _transactions: Transactions

    async def profile_view(
        self, user_id: str, *, turns_per_conversation: int = 50, conversations: int = 5
    ) -> ProfileView | None:
        async with self._transactions.tx() as session:
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
            events = await records(
                session,
                select(BehaviourEvent)
                .where(BehaviourEvent.user_id == user_id)
                .order_by(BehaviourEvent.occurred_at.desc(), BehaviourEvent.id.desc())
                .limit(20),
                event_record,
            )
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
                newest_first = await records(
                    session,
                    select(Turn)
                    .where(Turn.conversation_id == conversation.id)
                    .order_by(Turn.position.desc())
                    .limit(turns_per_conversation),
                    turn_record,
                )
                turns = newest_first[::-1]
                recent.append(ConversationTurns(conversation_record(conversation), turns))
            return ProfileView(
                user=user_record(user),
                profile=or_none(profile_record, profile),
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

        Vectors are read `batch` profiles at a time (keyset on user id) and scored in a worker
        thread, so the event loop is never blocked by the arithmetic.
        """
        async with self._transactions.tx() as session:
            own = await session.get(Profile, user_id)
            if own is None:
                return []
            target = from_bytes(own.vector)
            version, dim = own.model_version, own.dim
        nearest = Nearest(k)
        after = ""
        while True:
            async with self._transactions.tx() as session:
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
            scored = await asyncio.to_thread(score_blobs, target, blobs, k + 1)
            for index, similarity in scored:
                if ids[index] != user_id:
                    nearest.offer(similarity, ids[index])
            if len(rows) < batch:
                break
        ranked = nearest.ranked()
        if not ranked:
            return []
        async with self._transactions.tx() as session:
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
