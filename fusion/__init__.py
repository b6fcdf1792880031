"""The neural side: encoders, fusion, profile updates, micro-batching and device handling."""

from fusion.asr import AsrConfig, SpeechRecognizer, Transcript, TurnTranscriber, word_error_rate
from fusion.audio import StreamResampler
from fusion.batcher import BatcherConfig, BatcherStats, MicroBatcher, Overloaded
from fusion.behaviour import EVENT_CATALOGUE, EventLike
from fusion.device import select_device
from fusion.heads import OUT_OF_SCOPE, SERVICE_EMOTIONS, UnderstandingResult
from fusion.inference import FuseRequest, FuseResult, FusionInference
from fusion.profile_update import (
    ProfileState,
    ProfileUpdateConfig,
    conditions_heads,
    update_profile,
    update_state,
)
from fusion.serving import (
    FusionConfig,
    FusionRuntime,
    Observation,
    Observed,
    TurnInput,
    TurnReading,
)
from fusion.text_encoder import EMBEDDING_DIM, TextEncoder, TextEncoderConfig
from fusion.turn_model import TurnModel, TurnModelConfig, turn_features
from fusion.vad import (
    SpeechDiscarded,
    SpeechEnded,
    SpeechPaused,
    SpeechStarted,
    VadConfig,
    VadEvent,
    VadModel,
    VadStream,
)

__all__ = [
    "EMBEDDING_DIM",
    "EVENT_CATALOGUE",
    "OUT_OF_SCOPE",
    "SERVICE_EMOTIONS",
    "AsrConfig",
    "BatcherConfig",
    "BatcherStats",
    "EventLike",
    "FuseRequest",
    "FuseResult",
    "FusionConfig",
    "FusionInference",
    "FusionRuntime",
    "MicroBatcher",
    "Observation",
    "Observed",
    "Overloaded",
    "ProfileState",
    "ProfileUpdateConfig",
    "SpeechDiscarded",
    "SpeechEnded",
    "SpeechPaused",
    "SpeechRecognizer",
    "SpeechStarted",
    "StreamResampler",
    "TextEncoder",
    "TextEncoderConfig",
    "Transcript",
    "TurnInput",
    "TurnModel",
    "TurnModelConfig",
    "TurnReading",
    "TurnTranscriber",
    "UnderstandingResult",
    "VadConfig",
    "VadEvent",
    "VadModel",
    "VadStream",
    "conditions_heads",
    "select_device",
    "turn_features",
    "update_profile",
    "update_state",
    "word_error_rate",
]
