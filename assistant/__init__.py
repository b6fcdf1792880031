"""The conversation: wire protocol, chat sessions, identity, redaction and settings."""

from assistant.chat import ChatConfig, ChatConnection, ChatService
from assistant.config import Settings, SettingsError
from assistant.outbox import Transport
from assistant.protocol import MAX_FRAME_BYTES, ErrorCode, parse_client_frame
from assistant.redaction import redact
from assistant.refusion import RefuseReport
from assistant.runtime import Models, Runtime, load_models, migrate_database, refuse_database
from assistant.tokens import issue_token, verify_token
from assistant.training import TRAINERS, train

__all__ = [
    "MAX_FRAME_BYTES",
    "TRAINERS",
    "ChatConfig",
    "ChatConnection",
    "ChatService",
    "ErrorCode",
    "Models",
    "RefuseReport",
    "Runtime",
    "Settings",
    "SettingsError",
    "Transport",
    "issue_token",
    "load_models",
    "migrate_database",
    "parse_client_frame",
    "redact",
    "refuse_database",
    "train",
    "verify_token",
]
