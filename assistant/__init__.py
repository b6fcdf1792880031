"""The conversation: wire protocol, chat sessions, identity, redaction and settings."""

from assistant.chat import ChatConfig, ChatConnection, ChatService
from assistant.config import Settings, SettingsError
from assistant.generation import ResponseGenerator
from assistant.operator_admin import create_operator, list_operators, revoke_operator
from assistant.operator_roles import ROLES
from assistant.operators import OperatorConnection, OperatorService
from assistant.outbox import Transport
from assistant.protocol import MAX_FRAME_BYTES, ErrorCode, parse_client_frame
from assistant.redaction import redact
from assistant.refusion import RefuseReport
from assistant.runtime import Models, Runtime, load_models, migrate_database, refuse_database
from assistant.static import CSP, Asset, static_asset
from assistant.tokens import issue_token, verify_token
from assistant.training import TRAINERS, train

__all__ = [
    "CSP",
    "MAX_FRAME_BYTES",
    "ROLES",
    "TRAINERS",
    "Asset",
    "ChatConfig",
    "ChatConnection",
    "ChatService",
    "ErrorCode",
    "Models",
    "OperatorConnection",
    "OperatorService",
    "RefuseReport",
    "ResponseGenerator",
    "Runtime",
    "Settings",
    "SettingsError",
    "Transport",
    "create_operator",
    "issue_token",
    "list_operators",
    "load_models",
    "migrate_database",
    "parse_client_frame",
    "redact",
    "refuse_database",
    "revoke_operator",
    "static_asset",
    "train",
    "verify_token",
]
