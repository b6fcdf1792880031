"""The operator side of the store: what the operator console reads and writes.

Each concern is a module of its own (accounts and audit, search, profile views, operator
turns and corrections, export and erasure); `OperatorStore` puts them together on a `Store`'s
transactions. Like the store, it returns frozen dataclasses.
"""

from __future__ import annotations

from profiles.accounts import OperatorAccounts
from profiles.operator_turns import OperatorTurns
from profiles.privacy import Privacy
from profiles.profile_views import ProfileViews
from profiles.search import UserSearch
from profiles.store import Store

__all__ = ["OperatorStore"]


class OperatorStore(OperatorAccounts, UserSearch, ProfileViews, OperatorTurns, Privacy):
    """Reads and writes for the operator console, on top of a `Store`'s transactions."""

    def __init__(self, store: Store) -> None:
        self._transactions = store.transactions
