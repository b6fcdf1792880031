"""What the server holds of the neural side: loaded models behind micro-batchers.

The assistant hands in plain strings and arrays and gets numpy arrays back; torch never
leaves this package.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch

from fusion.batcher import BatcherConfig, MicroBatcher
from fusion.device import select_device
from fusion.profile_update import MODEL_VERSION, ProfileUpdateConfig, update_profile
from fusion.text_encoder import TextEncoder, TextEncoderConfig

Vector = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class FusionConfig:
    device: str = "auto"
    batcher: BatcherConfig = field(default_factory=BatcherConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    profile: ProfileUpdateConfig = field(default_factory=ProfileUpdateConfig)


class FusionRuntime:
    """Loads the models once; `start`/`stop` own the batchers' tasks and threads."""

    model_version = MODEL_VERSION

    def __init__(self, config: FusionConfig | None = None) -> None:
        self.config = config or FusionConfig()
        self.device = select_device(self.config.device)
        started = time.perf_counter()
        self.text_encoder = TextEncoder(self.device, self.config.text)
        self.load_seconds = time.perf_counter() - started
        self._text: MicroBatcher[str, Vector] | None = None

    def _encode_batch(self, texts: Sequence[str]) -> list[Vector]:
        return list(self.text_encoder.encode(texts))

    def start(self) -> None:
        if self._text is None:
            self._text = MicroBatcher(self._encode_batch, self.config.batcher, name="text")
            self._text.start()

    async def stop(self) -> None:
        batcher, self._text = self._text, None
        if batcher is not None:
            await batcher.stop()

    @property
    def text_batcher(self) -> MicroBatcher[str, Vector]:
        if self._text is None:
            raise RuntimeError("FusionRuntime.start() has not been called")
        return self._text

    async def encode_text(self, text: str) -> Vector:
        """One sentence embedding (384,), computed in a shared micro-batch off the event loop."""
        return await self.text_batcher.submit(text)

    def update_profile(self, previous: Vector | None, observation: Vector, dt_s: float) -> Vector:
        return update_profile(previous, observation, dt_s, self.config.profile)

    def describe(self) -> dict[str, str]:
        return {
            "device": str(self.device),
            "torch": torch.__version__,
            "model_version": self.model_version,
        }
