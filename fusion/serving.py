"""What the server holds of the neural side: loaded models behind micro-batchers.

The assistant hands in plain strings, arrays and event records and gets numpy arrays back;
torch never leaves this package. Every model call goes through a MicroBatcher, so requests
from all sessions share forwards and nothing runs on the event loop thread.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from fusion.batcher import BatcherConfig, MicroBatcher
from fusion.behaviour import EventLike
from fusion.device import select_device
from fusion.heads import Understanding, UnderstandingResult
from fusion.inference import WEIGHTS_PATH, FuseRequest, FuseResult, FusionInference
from fusion.profile_update import ProfileState, ProfileUpdateConfig, update_state
from fusion.text_encoder import TextEncoder, TextEncoderConfig

Vector = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class FusionConfig:
    device: str = "auto"
    batcher: BatcherConfig = field(default_factory=BatcherConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    profile: ProfileUpdateConfig = field(default_factory=ProfileUpdateConfig)
    fusion_weights: Path = WEIGHTS_PATH
    # Behaviour the fusion sees with a turn: the user's latest events.
    max_events: int = 32
    # CPU threads of a forward for a lone request; None: half the usable cores. Batches of
    # two or more use torch's default. A lone message is the quiet server's case, and there
    # the event loop and the database run beside the model: a forward spread over every
    # core waits for whichever core they hold, so the turn is slower than on fewer threads.
    lone_threads: int | None = None
    # Turn batches in flight at once; None: two on a CPU with two cores or more, else one.
    batch_workers: int | None = None


@dataclass(frozen=True, slots=True)
class Observation:
    """One thing that happened to a user, for the fusion model: any modality may be absent."""

    now: datetime
    text: str | None = None
    events: Sequence[EventLike] = ()
    # [speech_dim] features of the utterance (fusion.speech.SpeechFeaturizer) for a voice turn.
    speech: Vector | None = None


@dataclass(frozen=True, slots=True)
class TurnInput:
    """Everything the models read of one message, known when it arrives."""

    text: str
    profile: Vector | None  # [128] the user's profile before the message
    events: Sequence[EventLike]  # the user's latest behaviour
    now: datetime
    speech: Vector | None = None  # [speech_dim] when the message was spoken (fusion)
    voice: Vector | None = None  # [VOICE_EMOTION_DIM] when spoken (the emotion head)


@dataclass(frozen=True, slots=True)
class TurnReading:
    """The models' reading of one message: its embedding, the fused vector (with each
    modality's share) and the intent and emotion heads' results."""

    text_vector: Vector  # [384]
    fused: FuseResult
    understanding: UnderstandingResult


@dataclass(frozen=True, slots=True)
class Observed:
    text_vector: Vector | None  # [384] when the observation had text
    fused: FuseResult


def _weights_version(path: Path) -> str:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return f"fusion-{digest}"


class FusionRuntime:
    """Loads the models once; `start`/`stop` own the batchers' tasks and threads."""

    def __init__(self, config: FusionConfig | None = None) -> None:
        self.config = config or FusionConfig()
        self.device = select_device(self.config.device)
        started = time.perf_counter()
        self.text_encoder = TextEncoder(self.device, self.config.text)
        self.fusion = FusionInference.load(self.config.fusion_weights, self.device)
        self.model_version = _weights_version(self.config.fusion_weights)
        self.understanding = Understanding.load(self.device)
        self.load_seconds = time.perf_counter() - started
        self._text: MicroBatcher[str, Vector] | None = None
        self._fuse: MicroBatcher[FuseRequest, FuseResult] | None = None
        self._turn: MicroBatcher[TurnInput, TurnReading] | None = None
        self._threads = ThreadPolicy(self.config.lone_threads, cpu=self.device.type == "cpu")

    @property
    def dim(self) -> int:
        return self.fusion.dim

    def _turn_workers(self) -> int:
        if self.config.batch_workers is not None:
            return max(1, self.config.batch_workers)
        return 2 if self.device.type == "cpu" and self._threads.usable >= 2 else 1

    def _encode_batch(self, texts: Sequence[str]) -> list[Vector]:
        return list(self.text_encoder.encode(texts))

    def start(self) -> None:
        if self._text is None:
            self._text = MicroBatcher(
                self._threads.wrap(self._encode_batch), self.config.batcher, name="text"
            )
            self._text.start()
        if self._fuse is None:
            self._fuse = MicroBatcher(
                self._threads.wrap(self.fusion.fuse_many), self.config.batcher, name="fusion"
            )
            self._fuse.start()
        if self._turn is None:
            self._turn = MicroBatcher(
                self._threads.wrap(self._read_batch),
                replace(self.config.batcher, workers=self._turn_workers()),
                name="turn",
            )
            self._turn.start()

    async def stop(self) -> None:
        batchers = (self._text, self._fuse, self._turn)
        self._text = self._fuse = self._turn = None
        for batcher in batchers:
            if batcher is not None:
                await batcher.stop()

    @property
    def batchers(self) -> tuple[MicroBatcher[Any, Any], ...]:
        """The running micro-batchers, one per model (for metrics)."""
        return tuple(b for b in (self._turn, self._text, self._fuse) if b is not None)

    @property
    def text_batcher(self) -> MicroBatcher[str, Vector]:
        if self._text is None:
            raise RuntimeError("FusionRuntime.start() has not been called")
        return self._text

    @property
    def fusion_batcher(self) -> MicroBatcher[FuseRequest, FuseResult]:
        if self._fuse is None:
            raise RuntimeError("FusionRuntime.start() has not been called")
        return self._fuse

    async def encode_text(self, text: str) -> Vector:
        """One sentence embedding (384,), computed in a shared micro-batch off the event loop."""
        return await self.text_batcher.submit(text)

    async def observe(self, observation: Observation) -> Observed:
        """The fused vector of one observation, each modality's share in it, and the text's
        own embedding (for retrieval and the understanding heads)."""
        text = await self.encode_text(observation.text) if observation.text else None
        return Observed(text, await self.fuse(text, observation))

    async def fuse(self, text_vector: Vector | None, observation: Observation) -> FuseResult:
        """The fusion step alone, for callers that already hold the text's embedding."""
        return await self.fusion_batcher.submit(
            FuseRequest(text_vector, observation.speech, observation.events, observation.now)
        )

    def _read_batch(self, inputs: Sequence[TurnInput]) -> list[TurnReading]:
        # The three models back to back in one worker call: a chat turn needs all of them,
        # and each hand-over between the event loop and a worker thread costs more than the
        # fusion and head forwards themselves.
        vectors = self._encode_batch([i.text for i in inputs])
        fused = self.fusion.fuse_many(
            [
                FuseRequest(v, i.speech, i.events, i.now)
                for v, i in zip(vectors, inputs, strict=True)
            ]
        )
        understood = self.understanding.predict_many(
            np.stack(vectors),
            [i.profile for i in inputs],
            [i.voice for i in inputs],
            [i.text for i in inputs],
        )
        return [TurnReading(v, f, u) for v, f, u in zip(vectors, fused, understood, strict=True)]

    async def read_turn(self, turn: TurnInput) -> TurnReading:
        """Encoder, fusion and the understanding heads for one message, in a shared batch."""
        if self._turn is None:
            raise RuntimeError("FusionRuntime.start() has not been called")
        return await self._turn.submit(turn)

    def update_profile(
        self, previous: ProfileState | None, result: FuseResult, dt_s: float
    ) -> ProfileState:
        return update_state(previous, result.z, result.contributions, dt_s, self.config.profile)

    def describe(self) -> dict[str, str]:
        return {
            "device": str(self.device),
            "torch": torch.__version__,
            "model_version": self.model_version,
        }


class ThreadPolicy:
    """Sets torch's CPU threads, in each batcher's worker thread, by the size of its batch and
    the batches running beside it: a lone message gets `lone` threads, a batch its share of
    all of them. Two batches on one core each outrun one batch on two cores: a forward split
    across cores waits at every op for whichever core another thread holds."""

    def __init__(self, lone: int | None, *, cpu: bool) -> None:
        self.batch = torch.get_num_threads()
        self.usable = (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else os.cpu_count() or 1
        )
        self.lone = max(1, lone if lone is not None else self.usable // 2)
        self._cpu = cpu
        self._current = threading.local()
        self._lock = threading.Lock()
        self._running = 0

    def wrap(
        self, run: Callable[[Sequence[Any]], list[Any]]
    ) -> Callable[[Sequence[Any]], list[Any]]:
        if not self._cpu:
            return run

        def sized(batch: Sequence[Any]) -> list[Any]:
            with self._lock:
                self._running += 1
                running = self._running
            try:
                threads = self.lone if len(batch) == 1 else max(1, self.batch // running)
                if getattr(self._current, "threads", None) != threads:
                    torch.set_num_threads(threads)
                    self._current.threads = threads
                return run(batch)
            finally:
                with self._lock:
                    self._running -= 1

        return sized
