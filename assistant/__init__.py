"""The conversation side, as the network edge (server.py) and embedders use it.

Each room is a sub-package: core, cluster, replies, chat, voice, operators, app; its
`__init__` lists its modules. docs/architecture.md shows how they fit together.
"""

from assistant.app.operator_accounts import create_operator
from assistant.app.runtime import (
    Models,
    Runtime,
    load_models,
    migrate_database,
    single_threaded_blas,
)
from assistant.app.settings import Settings
from assistant.app.static import CSP, static_asset
from assistant.chat.connection import ChatConnection
from assistant.chat.rate_limits import RateLimiter, RateLimits
from assistant.chat.widget_tokens import issue_token, verify_token
from assistant.cluster.replicas import Cluster, ClusterConfig
from assistant.core.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
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
from assistant.replies.generation import ResponseGenerator
from assistant.voice.models import VoiceModels, VoiceModelsConfig
from assistant.voice.native import NativeConnection
from assistant.voice.twilio import TwilioConnection
from assistant.voice.twilio_signature import (
    TWILIO_SIGNATURE_HEADER,
    twilio_refusal,
    twilio_stream_url,
)

__all__ = [
    "CLOSE_POLICY",
    "CLOSE_SERVICE_RESTART",
    "CLOSE_TRY_AGAIN",
    "CSP",
    "MAX_FRAME_BYTES",
    "METRICS_CONTENT_TYPE",
    "TWILIO_SIGNATURE_HEADER",
    "ChatConnection",
    "Cluster",
    "ClusterConfig",
    "Models",
    "NativeConnection",
    "OperatorConnection",
    "RateLimiter",
    "RateLimits",
    "ResponseGenerator",
    "Runtime",
    "Settings",
    "SettingsError",
    "Transport",
    "TransportClosed",
    "TwilioConnection",
    "VoiceModels",
    "VoiceModelsConfig",
    "create_operator",
    "issue_token",
    "load_models",
    "migrate_database",
    "redact",
    "single_threaded_blas",
    "static_asset",
    "twilio_refusal",
    "twilio_stream_url",
    "verify_token",
]
