"""Builds and owns everything the server runs on, from Settings: store, models, services."""

from __future__ import annotations

import asyncio
import logging

from assistant.chat import ChatConfig, ChatService
from assistant.config import Settings
from assistant.generation import ResponseGenerator
from assistant.operators import OperatorService
from assistant.refusion import RefuseReport, refuse_all
from fusion import BatcherConfig, FusionConfig, FusionRuntime, load_text_generator
from profiles import EngineOptions, OperatorStore, Store, migrate

log = logging.getLogger(__name__)


Models = FusionRuntime


def migrate_database(url: str) -> None:
    """Upgrade the database at `url` to the latest schema (blocking)."""
    migrate(url)


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
    )


async def refuse_database(settings: Settings) -> RefuseReport:
    """Rebuild every stored profile with the shipped fusion model (`assistant refuse`)."""
    models = load_models(settings)
    store = Store.open(settings.db_url)
    try:
        return await refuse_all(store, models)
    finally:
        await store.close()


def build_generator(settings: Settings, models: Models) -> ResponseGenerator:
    """The reply generator: knowledge base embedded with the text encoder (blocking)."""
    config = settings.generation
    return ResponseGenerator.from_config(
        config,
        models.text_encoder.encode,
        local_loader=load_text_generator if config.llm == "transformers" else None,
    )


class Runtime:
    """Open with `start`, close with `stop`; `models` may be passed in to share loaded weights."""

    def __init__(
        self,
        settings: Settings,
        models: Models | None = None,
        generator: ResponseGenerator | None = None,
    ) -> None:
        self.settings = settings
        self._own_models = models is None
        self.models = models or load_models(settings)
        self.store = Store.open(
            settings.db_url, EngineOptions(sqlite_synchronous=settings.sqlite_synchronous)
        )
        self.chat = ChatService(
            self.store,
            self.models,
            ChatConfig(
                widget_secret=settings.widget_secret,
                resume_ttl_s=settings.resume_ttl_s,
                replay_frames=settings.replay_frames,
            ),
            generator,
        )
        self.operators = OperatorService(OperatorStore(self.store), self.chat)

    async def start(self, *, migrate_db: bool = False) -> None:
        if migrate_db:
            await asyncio.to_thread(migrate, self.settings.db_url)
        if self.settings.widget_secret is None:
            log.warning("ASSISTANT_WIDGET_SECRET is not set: anonymous widget users are allowed")
        if self.chat._generator is None:
            self.chat.generator = await asyncio.to_thread(
                build_generator, self.settings, self.models
            )
        self.models.start()
        self.chat.start()

    async def stop(self) -> None:
        await self.chat.stop()
        if self._own_models:
            await self.models.stop()
        await self.store.close()

    async def ready(self) -> bool:
        return await self.store.ping()
