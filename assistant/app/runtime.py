"""Builds and owns everything the server runs on, from Settings: store, models, services."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from dataclasses import replace
from pathlib import Path

from threadpoolctl import threadpool_limits  # type: ignore[import-untyped, unused-ignore]

from assistant.app.settings import Settings
from assistant.chat.rate_limits import RateLimiter
from assistant.chat.service import ChatConfig, ChatService
from assistant.cluster.replicas import Cluster, ClusterConfig
from assistant.core.metrics import Metrics
from assistant.operators.service import OperatorService
from assistant.operators.sign_in_throttle import AuthThrottle
from assistant.replies.generation import ResponseGenerator
from assistant.replies.llm_backends import TextGenerator
from assistant.replies.retrieval import EmbeddingCache
from assistant.voice.models import VoiceModels, VoiceModelsConfig
from assistant.voice.service import VoiceConfig, VoiceService
from assistant.voice.turns import TurnPolicy
from fusion import BatcherConfig, FusionConfig, FusionRuntime
from fusion.asr import AsrConfig
from fusion.text_encoder import hide_loading_progress
from fusion.turn_model import TurnModelConfig
from fusion.vad import VadConfig
from profiles import EngineOptions, OperatorStore, Store, UpgradeReport, migrate

log = logging.getLogger(__name__)


Models = FusionRuntime


def single_threaded_blas() -> None:
    """numpy's BLAS on one thread for the rest of the process. It would split the event
    loop's small products (retrieval's similarities) over a second thread, which then waits
    for a core the model workers hold, and the loop with it. torch's threads are its own."""
    threadpool_limits(limits=1, user_api="blas")


def migrate_database(url: str) -> UpgradeReport:
    """Upgrade the database at `url` to the latest schema (blocking); what it did to stored
    data."""
    return migrate(url)


def load_models(settings: Settings) -> Models:
    return FusionRuntime(fusion_config(settings))


def fusion_config(settings: Settings) -> FusionConfig:
    return FusionConfig(
        device=settings.device,
        batcher=BatcherConfig(
            max_batch=settings.batch_size,
            max_wait_s=settings.batch_wait_ms / 1000.0,
            max_queue=settings.batch_queue,
        ),
        lone_threads=settings.lone_threads,
        batch_workers=settings.batch_workers,
    )


def _load_local_model(path: str) -> TextGenerator:
    # transformers' causal-LM and streaming classes take about half a second to import; only
    # this LLM setting needs them, so the default start does without.
    from fusion.chat_lm import load_text_generator

    return load_text_generator(path)


def build_generator(settings: Settings, models: Models) -> ResponseGenerator:
    """The reply generator: knowledge base embedded with the text encoder (blocking)."""
    config = settings.generation
    encoder = models.text_encoder
    return ResponseGenerator.from_config(
        config,
        encoder.encode,
        local_loader=_load_local_model if config.llm == "transformers" else None,
        cache=(
            EmbeddingCache(Path(settings.cache_dir), encoder.fingerprint)
            if settings.cache_dir is not None
            else None
        ),
    )


def engine_options(settings: Settings) -> EngineOptions:
    return EngineOptions(
        sqlite_synchronous=settings.sqlite_synchronous,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout_s=settings.db_pool_timeout_s,
        pool_recycle_s=settings.db_pool_recycle_s,
    )


def cluster_config(settings: Settings) -> ClusterConfig:
    replica_id = settings.replica_id or (
        f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    )
    return ClusterConfig(
        replica_id,
        settings.redis_url,
        settings.redis_prefix,
        parked_ttl_s=settings.resume_ttl_s,
    )


def voice_config(settings: Settings) -> VoiceConfig:
    voice = settings.voice
    asr = AsrConfig(model_path=voice.asr_model, device=settings.device, beam_size=voice.asr_beam)
    if voice.asr_workers:
        asr = replace(asr, workers=voice.asr_workers)
    base = VadConfig()
    if voice.turn_detection == "model":
        # The VAD's pause is when the model is asked; its end silence the longest wait.
        check = voice.turn_check_ms
        vad = VadConfig(
            end_silence_ms=voice.turn_max_silence_ms,
            max_utterance_s=voice.vad_max_utterance_s,
            speech_pad_ms=min(base.speech_pad_ms, check),
            pause_ms=check,
        )
    else:
        silence = voice.vad_end_silence_ms
        # A short end-of-speech silence leaves no room for the padding and the early pause.
        pause = base.pause_ms if base.pause_ms is not None and base.pause_ms < silence else None
        vad = VadConfig(
            end_silence_ms=silence,
            max_utterance_s=voice.vad_max_utterance_s,
            speech_pad_ms=min(base.speech_pad_ms, silence),
            pause_ms=pause,
        )
    turns = TurnPolicy(
        detection=voice.turn_detection,
        threshold=voice.turn_threshold,
        fallback_silence_ms=voice.vad_end_silence_ms,
    )
    return VoiceConfig(
        models=VoiceModelsConfig(
            tts=voice.tts,
            asr=asr,
            vad=vad,
            device=settings.device,
            turns=turns,
            turn_model=TurnModelConfig(model_path=voice.turn_model),
        ),
        send_queue=settings.send_queue,
    )


class Runtime:
    """Open with `start`, close with `stop`; `models` (and `voice`, the speech models) may be
    passed in to share loaded weights; otherwise the speech models load when `start` is told
    to load them (the server does; /readyz waits for them), or else with the first call."""

    def __init__(
        self,
        settings: Settings,
        models: Models | None = None,
        generator: ResponseGenerator | None = None,
        voice: VoiceModels | None = None,
    ) -> None:
        self.settings = settings
        # The server's stderr is its log: a progress bar there would break its lines.
        hide_loading_progress()
        self._own_models = models is None
        self.models = models or load_models(settings)
        self.store = Store.open(settings.db_url, engine_options(settings))
        self.metrics = Metrics()
        self.cluster = Cluster(cluster_config(settings))
        shared = self.cluster.count if settings.redis_url else None
        self.chat = ChatService(
            self.store,
            self.models,
            ChatConfig(
                widget_secret=settings.widget_secret,
                resume_ttl_s=settings.resume_ttl_s,
                replay_frames=settings.replay_frames,
                send_queue=settings.send_queue,
                handover_timeout_s=settings.drain_timeout_s,
                note_timeout_s=settings.note_timeout_s,
                dialogue=settings.dialogue,
            ),
            generator,
            cluster=self.cluster,
            limiter=RateLimiter(settings.rate, shared),
            metrics=self.metrics,
        )
        self.operators = OperatorService(
            OperatorStore(self.store), self.chat, AuthThrottle(settings.auth)
        )
        self.voice = VoiceService(self.chat, voice_config(settings), settings.widget_secret, voice)
        if settings.voice_notes:
            self.chat.hearing = self.voice
        self.metrics.watch(
            sessions=lambda: len(self.chat.sessions),
            redis_up=lambda: self.cluster.up,
            batchers=lambda: self.models.batchers,
            store_cpu=lambda: self.store.thread_cpu_s,
            fallbacks=self._fallbacks,
        )
        self._started = False
        self._speech: asyncio.Task[None] | None = None

    def _fallbacks(self) -> dict[str, int]:
        generator = self.chat.turns.generator
        return generator.stats.fallbacks_by_reason() if generator is not None else {}

    async def start(self, *, migrate_db: bool = False, load_speech: bool = False) -> None:
        """Open the store's schema if asked, build the reply generator, start the models'
        batchers and the cluster. `load_speech`: start loading the speech models in the
        background; the replica is not ready until they are (`speech_loaded` waits)."""
        if migrate_db:
            await asyncio.to_thread(migrate, self.settings.db_url)
        if self.settings.widget_secret is None:
            log.warning("ASSISTANT_WIDGET_SECRET is not set: anonymous widget users are allowed")
        generator = self.chat.turns.generator
        if generator is None:
            generator = await asyncio.to_thread(build_generator, self.settings, self.models)
            self.chat.turns.generator = generator
        log.info("replies are written by %s", generator.model_description)
        self.models.start()
        self.chat.start()
        await self.cluster.start()
        if load_speech and not self.voice.loaded:
            self._speech = asyncio.create_task(self._load_speech(), name="speech-models")
        self._started = True

    async def _load_speech(self) -> None:
        started = time.perf_counter()
        await self.voice.load()
        log.info("speech models loaded in %.1f s", time.perf_counter() - started)

    async def speech_loaded(self) -> None:
        """Wait for the speech models that `start(load_speech=True)` is loading."""
        if self._speech is not None:
            await self._speech

    async def stop(self) -> None:
        speech, self._speech = self._speech, None
        if speech is not None:
            speech.cancel()
            # Waited for, not awaited: a load that failed has told `speech_loaded` already.
            await asyncio.wait([speech])
        await self.voice.stop()
        await self.chat.stop()
        await self.cluster.stop()
        if self._own_models:
            await self.models.stop()
        await self.store.close()

    async def drain(self) -> None:
        """SIGTERM: finish the turns in flight, park the sessions for other replicas."""
        self.metrics.draining.set(1)
        # Calls cannot move to another replica: they end first, with their turns stored.
        await self.voice.drain()
        await self.chat.drain(self.settings.drain_timeout_s)

    async def unready(self) -> str | None:
        """Why this replica should get no traffic now (None: ready)."""
        if not self._started:
            return "models loading"
        if self._speech is not None and not self.voice.loaded:
            return "speech models loading"
        if self.chat.draining:
            return "draining"
        if not await self.store.ping():
            return "database unreachable"
        return None
