"""Persistence: SQLAlchemy models, the async store returning dataclasses, migrations."""

from profiles.engine import DEFAULT_DB_URL, EngineOptions
from profiles.errors import NotFound, StoreError, StoreUnavailable
from profiles.migrate import check as check_schema
from profiles.migrate import upgrade as migrate
from profiles.records import (
    ConversationRecord,
    EventRecord,
    NewEvent,
    ProfileRecord,
    ProfileUpdate,
    SnapshotRecord,
    TurnLabels,
    TurnRecord,
    UserRecord,
)
from profiles.store import Store

__all__ = [
    "DEFAULT_DB_URL",
    "ConversationRecord",
    "EngineOptions",
    "EventRecord",
    "NewEvent",
    "NotFound",
    "ProfileRecord",
    "ProfileUpdate",
    "SnapshotRecord",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "TurnLabels",
    "TurnRecord",
    "UserRecord",
    "check_schema",
    "migrate",
]
