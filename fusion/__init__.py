"""The neural side: encoders, fusion, profile updates, micro-batching and device handling."""

from fusion.batcher import BatcherConfig, BatcherStats, MicroBatcher, Overloaded
from fusion.behaviour import EVENT_CATALOGUE, EventLike
from fusion.chat_lm import LocalCausalLM, load_text_generator
from fusion.device import select_device
from fusion.inference import FuseRequest, FuseResult, FusionInference
from fusion.profile_update import ProfileState, ProfileUpdateConfig, update_profile, update_state
from fusion.runtime import FusionConfig, FusionRuntime, Observation, Observed
from fusion.text_encoder import EMBEDDING_DIM, TextEncoder, TextEncoderConfig
from fusion.understanding import OUT_OF_SCOPE, SERVICE_EMOTIONS, UnderstandingResult

__all__ = [
    "EMBEDDING_DIM",
    "EVENT_CATALOGUE",
    "OUT_OF_SCOPE",
    "SERVICE_EMOTIONS",
    "BatcherConfig",
    "BatcherStats",
    "EventLike",
    "FuseRequest",
    "FuseResult",
    "FusionConfig",
    "FusionInference",
    "FusionRuntime",
    "LocalCausalLM",
    "MicroBatcher",
    "Observation",
    "Observed",
    "Overloaded",
    "ProfileState",
    "ProfileUpdateConfig",
    "TextEncoder",
    "TextEncoderConfig",
    "UnderstandingResult",
    "load_text_generator",
    "select_device",
    "update_profile",
    "update_state",
]
