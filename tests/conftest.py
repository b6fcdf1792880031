"""Shared fixtures: migrated databases (SQLite and PostgreSQL), loaded models, real servers.

PostgreSQL tests need `ASSISTANT_TEST_PG_URL` (an asyncpg URL of a database the tests may
create databases from, e.g. postgresql+asyncpg://postgres@127.0.0.1:5432/test); `.ci/run`
sets it. Without it they skip with that reason.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from assistant import Models, ResponseGenerator, Settings, load_models, migrate_database
from assistant.app.runtime import build_generator
from assistant.voice.models import VoiceModels, VoiceModelsConfig
from fusion.asr import AsrConfig
from profiles import Store
from server import RunningServer, running
from tests.support.databases import temporary_pg_database


def pytest_runtest_setup(item: pytest.Item) -> None:
    """speechbrain puts lazy stand-ins for its optional integrations (k2, flair, spaCy, ...)
    into sys.modules; reading any attribute of one whose package is not installed raises
    ImportError. Hypothesis reads every new module's `__file__` to collect constants, now and
    then, so a property test failed at random once speechbrain was loaded. The stand-ins that
    never loaded are unused here: they leave sys.modules before each test."""
    lazy = getattr(sys.modules.get("speechbrain.utils.importutils"), "LazyModule", None)
    if lazy is None:
        return
    for name, module in list(sys.modules.items()):
        if isinstance(module, lazy) and module.lazy_module is None:
            del sys.modules[name]


PG_URL_ENV = "ASSISTANT_TEST_PG_URL"
RECV_TIMEOUT_S = 30.0


def pg_admin_url() -> str:
    url = os.environ.get(PG_URL_ENV)
    if not url:
        pytest.skip(f"PostgreSQL tests need {PG_URL_ENV} (set by .ci/run)")
    return url


@asynccontextmanager
async def empty_database(kind: str, tmp_path: Path) -> AsyncIterator[str]:
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'assistant.db'}"
        return
    async with temporary_pg_database(pg_admin_url()) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
async def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A database with no schema, on each backend."""
    async with empty_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A migrated database, on each backend."""
    async with empty_database(request.param, tmp_path) as url:
        await asyncio.to_thread(migrate_database, url)
        yield url


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    """The store on a migrated database, on each backend."""
    s = Store.open(db_url)
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
async def sqlite_url(tmp_path: Path) -> str:
    """A migrated SQLite database (for tests about the server rather than the store)."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'assistant.db'}"
    await asyncio.to_thread(migrate_database, url)
    return url


@pytest.fixture(scope="session")
async def models() -> AsyncIterator[Models]:
    """The real models, loaded once for the whole run and shared by every server."""
    loaded = load_models(Settings(device="cpu"))
    loaded.start()
    yield loaded
    await loaded.stop()


@pytest.fixture(scope="session")
async def generator(models: Models) -> ResponseGenerator:
    """The reply generator with its embedded knowledge base, built once for the run."""
    return await asyncio.to_thread(build_generator, Settings(device="cpu"), models)


ServerFactory = Callable[..., AbstractAsyncContextManager[RunningServer]]


@pytest.fixture(scope="session")
async def voice_models() -> AsyncIterator[VoiceModels]:
    """The speech models of calls and voice notes, loaded once for the whole run, listening
    by the default settings; the end-of-turn model is loaded too, for the model mode's views
    (tests/test_turn_model.py)."""
    config = VoiceModelsConfig(asr=AsrConfig(device="cpu"), device="cpu")
    loaded = await asyncio.to_thread(partial(VoiceModels.load, config, turn_model=True))
    yield loaded
    await loaded.stop()


@pytest.fixture
def voice_server(
    models: Models, generator: ResponseGenerator, voice_models: VoiceModels, sqlite_url: str
) -> ServerFactory:
    """Starts servers with the speech models; keyword arguments override Settings fields."""

    def start(**overrides: Any) -> AbstractAsyncContextManager[RunningServer]:
        settings = replace(
            Settings(host="127.0.0.1", port=0, db_url=sqlite_url, device="cpu"), **overrides
        )
        return running(settings, models=models, generator=generator, voice=voice_models)

    return start


@pytest.fixture
def start_server(models: Models, generator: ResponseGenerator, sqlite_url: str) -> ServerFactory:
    """`async with start_server(widget_secret=...) as srv:` a real server on port 0."""

    def factory(**overrides: Any) -> AbstractAsyncContextManager[RunningServer]:
        settings = replace(
            Settings(host="127.0.0.1", port=0, db_url=sqlite_url, device="cpu"), **overrides
        )
        return running(settings, models=models, generator=generator)

    return factory


@pytest.fixture
async def server(start_server: ServerFactory) -> AsyncIterator[RunningServer]:
    async with start_server() as srv:
        yield srv


class Client:
    """A real websockets client speaking JSON frames, with timeouts on every receive."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def send(self, frame: dict[str, Any] | str) -> None:
        await self.ws.send(frame if isinstance(frame, str) else json.dumps(frame))

    async def recv(self, within: float = RECV_TIMEOUT_S) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), within)
        frame = json.loads(raw)
        assert isinstance(frame, dict)
        return frame

    async def recv_until(
        self, frame_type: str, within: float = RECV_TIMEOUT_S
    ) -> list[dict[str, Any]]:
        """Every frame up to and including the first of `frame_type`."""
        frames: list[dict[str, Any]] = []
        while True:
            frame = await self.recv(within)
            frames.append(frame)
            if frame["type"] == frame_type:
                return frames

    async def hello(self, **fields: Any) -> dict[str, Any]:
        await self.send({"type": "hello", **fields})
        welcome = await self.recv()
        assert welcome["type"] == "welcome", welcome
        return welcome


ClientFactory = Callable[..., Awaitable[Client]]


@pytest.fixture
async def open_client(server: RunningServer) -> AsyncIterator[ClientFactory]:
    """`await open_client()` connects to `server`'s /chat; all are closed afterwards."""
    opened: list[ClientConnection] = []

    async def factory(path: str = "/chat", url: str | None = None) -> Client:
        ws = await connect((url or server.url) + path, max_size=None)
        opened.append(ws)
        return Client(ws)

    yield factory
    for ws in opened:
        await ws.close()
