"""The conversation: wire protocol, chat sessions, identity, redaction and settings."""

from assistant.app.operator_accounts import create_operator, list_operators, revoke_operator
from assistant.app.re_fusion import ReFuseReport, re_fuse_database
from assistant.app.runtime import (
    Models,
    Runtime,
    load_models,
    migrate_database,
    single_threaded_blas,
)
from assistant.app.settings import Settings
from assistant.app.static import CSP, Asset, static_asset
from assistant.app.training import TRAINERS, train
from assistant.chat.connection import ChatConnection
from assistant.chat.protocol import ErrorCode, parse_client_frame
from assistant.chat.rate_limits import RateLimiter, RateLimits
from assistant.chat.service import ChatConfig, ChatService
from assistant.chat.widget_tokens import issue_token, verify_token
from assistant.cluster.replicas import Cluster, ClusterConfig
from assistant.core.logs import configure_logging
from assistant.core.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from assistant.core.metrics import Metrics
from assistant.core.outbox import Transport
from assistant.core.redaction import redact
from assistant.core.settings import SettingsError
from assistant.core.wire import (
    CLOSE_POLICY,
    CLOSE_SERVICE_RESTART,
    CLOSE_TRY_AGAIN,
    MAX_FRAME_BYTES,
    TransportClosed,
)
from assistant.operators.connection import OperatorConnection
from assistant.operators.roles import ROLES
from assistant.operators.service import OperatorService
from assistant.replies.generation import ResponseGenerator
from assistant.voice.models import VoiceModels, VoiceModelsConfig
from assistant.voice.native import NativeConnection
from assistant.voice.service import VoiceConfig, VoiceService
from assistant.voice.synthesis import (
    EspeakTts,
    Synthesis,
    TextToSpeech,
    mulaw_frames,
    pcm16_frames,
    select_tts,
)
from assistant.voice.twilio import TwilioConnection

__all__ = [
    "CLOSE_POLICY",
    "CLOSE_SERVICE_RESTART",
    "CLOSE_TRY_AGAIN",
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
    "NativeConnection",
    "OperatorConnection",
    "OperatorService",
    "RateLimiter",
    "RateLimits",
    "ReFuseReport",
    "ResponseGenerator",
    "Runtime",
    "Settings",
    "SettingsError",
    "Synthesis",
    "TextToSpeech",
    "Transport",
    "TransportClosed",
    "TwilioConnection",
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
    "re_fuse_database",
    "redact",
    "revoke_operator",
    "select_tts",
    "single_threaded_blas",
    "static_asset",
    "train",
    "verify_token",
]
