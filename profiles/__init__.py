"""Persistence: SQLAlchemy models, the async store returning dataclasses, migrations."""

from profiles.engine import DEFAULT_DB_URL, EngineOptions
from profiles.errors import Conflict, NotFound, StoreError, StoreUnavailable
from profiles.migrate import UpgradeReport
from profiles.migrate import check as check_schema
from profiles.migrate import upgrade as migrate
from profiles.operator_records import (
    AuditRecord,
    ContributionPoint,
    ConversationTurns,
    EmotionPoint,
    EraseReport,
    IntentCount,
    LabelCorrectionRecord,
    Neighbour,
    OperatorRecord,
    OperatorRole,
    ProfileView,
    SearchPage,
    UserExport,
    UserQuery,
    UserSummary,
)
from profiles.operator_store import OperatorStore
from profiles.records import (
    ConversationRecord,
    EventRecord,
    FinishedTurn,
    NewEvent,
    ProfileRecord,
    ProfileUpdate,
    SnapshotRecord,
    StoredFrame,
    TurnLabels,
    TurnRecord,
    UserRecord,
)
from profiles.similarity import top_k_cosine
from profiles.store import Store

__all__ = [
    "DEFAULT_DB_URL",
    "AuditRecord",
    "Conflict",
    "ContributionPoint",
    "ConversationRecord",
    "ConversationTurns",
    "EmotionPoint",
    "EngineOptions",
    "EraseReport",
    "EventRecord",
    "FinishedTurn",
    "IntentCount",
    "LabelCorrectionRecord",
    "Neighbour",
    "NewEvent",
    "NotFound",
    "OperatorRecord",
    "OperatorRole",
    "OperatorStore",
    "ProfileRecord",
    "ProfileUpdate",
    "ProfileView",
    "SearchPage",
    "SnapshotRecord",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "StoredFrame",
    "TurnLabels",
    "TurnRecord",
    "UpgradeReport",
    "UserExport",
    "UserQuery",
    "UserRecord",
    "UserSummary",
    "check_schema",
    "migrate",
    "top_k_cosine",
]
