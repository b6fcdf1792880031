"""The conversation: wire protocol, chat sessions, identity, redaction and settings."""

from assistant.chat import ChatConfig, ChatConnection, ChatService
from assistant.cluster import Cluster, ClusterConfig
from assistant.config import Settings, SettingsError
from assistant.generation import ResponseGenerator
from assistant.logs import configure_logging
from assistant.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from assistant.metrics import Metrics
from assistant.operator_admin import create_operator, list_operators, revoke_operator
from assistant.operator_roles import ROLES
from assistant.operators import OperatorConnection, OperatorService
from assistant.outbox import Transport
from assistant.protocol import MAX_FRAME_BYTES, ErrorCode, parse_client_frame
from assistant.rate_limits import RateLimiter, RateLimits
from assistant.redaction import redact
from assistant.refusion import RefuseReport
from assistant.runtime import (
    Models,
    Runtime,
    load_models,
    migrate_database,
    refuse_database,
    single_threaded_blas,
)
from assistant.speech_out import (
    EspeakTts,
    Synthesis,
    TextToSpeech,
    mulaw_frames,
    pcm16_frames,
    select_tts,
)
from assistant.static import CSP, Asset, static_asset
from assistant.tokens import issue_token, verify_token
from assistant.training import TRAINERS, train
from assistant.voice import VoiceConfig, VoiceService
from assistant.voice_models import VoiceModels, VoiceModelsConfig

__all__ = [
    "CSP",
    "MAX_FRAME_BYTES",
    "METRICS_CONTENT_TYPE",
    "ROLES",
    "TRAINERS",
    "Asset",
    "ChatConfig",
    "ChatConnection",
    "ChatService",
    "Cluster",
    "ClusterConfig",
    "ErrorCode",
    "EspeakTts",
    "Metrics",
    "Models",
    "OperatorConnection",
    "OperatorService",
    "RateLimiter",
    "RateLimits",
    "RefuseReport",
    "ResponseGenerator",
    "Runtime",
    "Settings",
    "SettingsError",
    "Synthesis",
    "TextToSpeech",
    "Transport",
    "VoiceConfig",
    "VoiceModels",
    "VoiceModelsConfig",
    "VoiceService",
    "configure_logging",
    "create_operator",
    "issue_token",
    "list_operators",
    "load_models",
    "migrate_database",
    "mulaw_frames",
    "parse_client_frame",
    "pcm16_frames",
    "redact",
    "refuse_database",
    "revoke_operator",
    "select_tts",
    "single_threaded_blas",
    "static_asset",
    "train",
    "verify_token",
]
