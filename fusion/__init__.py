"""The neural side: encoders, profile updates, micro-batching and device handling."""

from fusion.batcher import BatcherConfig, BatcherStats, MicroBatcher, Overloaded
from fusion.device import select_device
from fusion.profile_update import MODEL_VERSION, ProfileUpdateConfig, update_profile
from fusion.runtime import FusionConfig, FusionRuntime
from fusion.text_encoder import EMBEDDING_DIM, TextEncoder, TextEncoderConfig

__all__ = [
    "EMBEDDING_DIM",
    "MODEL_VERSION",
    "BatcherConfig",
    "BatcherStats",
    "FusionConfig",
    "FusionRuntime",
    "MicroBatcher",
    "Overloaded",
    "ProfileUpdateConfig",
    "TextEncoder",
    "TextEncoderConfig",
    "select_device",
    "update_profile",
]
