"""Operator search over users: prefix matches and filters, newest-seen first, a page at a time."""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any, cast

from sqlalchemy import ColumnElement, Select, and_, or_, select

from profiles.models import Profile, User
from profiles.operator_records import SearchPage, UserQuery, UserSummary
from profiles.rows import user_record
from profiles.transactions import Transactions

__all__ = ["UserSearch"]

_USER_ID = re.compile(r"^[0-9a-f]{32}$")
# Above every character: `key >= p AND key < p + TOP` is "starts with p" under binary order.
_TOP = "\U0010ffff"


def _like_prefix(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _summary(user: User, turns: int | None) -> UserSummary:
    # The emotion and intent operators see everywhere: those of the latest labelled user turn.
    return UserSummary(user_record(user), user.current_emotion, user.recent_intent, int(turns or 0))


class UserSearch:
    """Search over users; part of `OperatorStore`."""

    _transactions: Transactions

    def _prefix(self, column: Any, value: str) -> ColumnElement[bool]:
        if self._transactions.backend == "postgresql":
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

    async def user_summaries(self, user_ids: Collection[str]) -> dict[str, UserSummary]:
        """The same summaries as search gives, for these users (those that exist), by id."""
        if not user_ids:
            return {}
        stmt = (
            select(User, Profile.turn_count)
            .outerjoin(Profile, Profile.user_id == User.id)
            .where(User.id.in_(sorted(set(user_ids))))
        )
        async with self._transactions.tx() as session:
            rows = (await session.execute(stmt)).all()
        return {user.id: _summary(user, turns) for user, turns in rows}

    async def search_users(self, query: UserQuery) -> SearchPage:
        stmt = self.search_statement(query)
        async with self._transactions.tx() as session:
            rows = (await session.execute(stmt)).all()
        items = [_summary(user, turns) for user, turns in rows[: query.limit]]
        more = len(rows) > query.limit and items
        last = items[-1].user if items else None
        return SearchPage(items, (last.last_seen_at, last.id) if more and last else None)
