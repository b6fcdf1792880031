"""Message rate limits: the policy on a fake clock, shared across replicas through Redis,
and refused messages over a real /chat connection."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import connect

from assistant import Cluster, ClusterConfig, RateLimiter, RateLimits
from server import RunningServer
from tests.conftest import Client, ServerFactory

REDIS_URL_ENV = "ASSISTANT_TEST_REDIS_URL"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_connection_and_user_limits_in_fixed_windows() -> None:
    clock = Clock()
    limiter = RateLimiter(RateLimits(window_s=10, per_connection=3, per_user=5), clock=clock)
    assert [await limiter.allow_message("c1", "u1") for _ in range(4)] == [True] * 3 + [False]
    # A second connection of the same user has its own allowance, the user's is shared.
    assert [await limiter.allow_message("c2", "u1") for _ in range(3)] == [True, True, False]
    assert await limiter.allow_message("c3", "u2"), "other users are not affected"
    clock.now += 10
    assert await limiter.allow_message("c1", "u1"), "a new window starts afresh"


async def test_zero_means_unlimited() -> None:
    limiter = RateLimiter(RateLimits(window_s=1, per_connection=0, per_user=0), clock=Clock())
    assert all([await limiter.allow_message("c", "u") for _ in range(1000)])


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError):
        RateLimits(window_s=0)
    with pytest.raises(ValueError):
        RateLimits(per_user=-1)


# shared through Redis


def _redis_url() -> str:
    url = os.environ.get(REDIS_URL_ENV)
    if not url:
        pytest.skip(f"Redis tests need {REDIS_URL_ENV}")
    return url


@pytest.fixture
async def two_replicas() -> AsyncIterator[tuple[Cluster, Cluster]]:
    """Two replicas' cluster links to one Redis, under a prefix of their own."""
    url = _redis_url()
    prefix = f"test-{uuid.uuid4().hex[:8]}:"
    a = Cluster(ClusterConfig("replica-a", url, prefix))
    b = Cluster(ClusterConfig("replica-b", url, prefix))
    await a.start()
    await b.start()
    assert a.up and b.up
    yield a, b
    await a.stop()
    await b.stop()


async def test_user_limit_holds_across_replicas(two_replicas: tuple[Cluster, Cluster]) -> None:
    a, b = two_replicas
    limits = RateLimits(window_s=60, per_connection=100, per_user=4)
    clock = Clock()
    on_a = RateLimiter(limits, a.count, clock=clock)
    on_b = RateLimiter(limits, b.count, clock=clock)
    allowed = [
        await limiter.allow_message(f"c{n}", "user-1")
        for n, limiter in enumerate([on_a, on_b, on_a, on_b, on_a, on_b])
    ]
    assert allowed == [True, True, True, True, False, False]
    assert await on_b.allow_message("c9", "user-2")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_without_redis_each_replica_counts_alone(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="assistant.cluster.bus")
    down = Cluster(ClusterConfig("lonely", f"redis://127.0.0.1:{_closed_port()}/0"))
    await down.start()
    try:
        assert not down.up
        limiter = RateLimiter(RateLimits(window_s=60, per_connection=100, per_user=2), down.count)
        assert [await limiter.allow_message(f"c{n}", "u") for n in range(3)] == [
            True,
            True,
            False,
        ]
        await asyncio.sleep(0.5)  # reconnect attempts keep failing meanwhile
        warnings = [r for r in caplog.records if "redis unreachable" in r.getMessage()]
        assert len(warnings) == 1, "one warning per outage, not one per attempt"
    finally:
        await down.stop()


# over /chat


WINDOW_S = 2.0


async def _next_window() -> None:
    """Sleep until just after the next window boundary, so a burst falls in one window."""
    await asyncio.sleep(WINDOW_S - time.time() % WINDOW_S + 0.05)


@pytest.fixture
async def limited_server(start_server: ServerFactory) -> AsyncIterator[RunningServer]:
    limits = RateLimits(window_s=WINDOW_S, per_connection=3, per_user=100)
    async with start_server(rate=limits) as srv:
        yield srv


async def test_a_refused_message_gets_rate_limited_and_is_not_stored(
    limited_server: RunningServer,
) -> None:
    async with connect(limited_server.url + "/chat") as ws:
        client = Client(ws)
        welcome = await client.hello(user={"external_id": "chatty"})
        event = {"type": "event", "name": "page_view", "at": "2026-01-01T00:00:00Z"}
        for n in range(4):
            await client.send({**event, "id": f"e{n}"})
            assert (await client.recv())["type"] == "ack", "events are not rate limited"
        await _next_window()
        for n in range(4):
            await client.send({"type": "message", "id": f"m{n}", "text": "Where is my card?"})
        frames: list[dict[str, Any]] = []
        while sum(f["type"] in ("reply", "error") for f in frames) < 4:
            frames.append(await client.recv())
        assert [f["id"] for f in frames if f["type"] == "ack"] == ["m0", "m1", "m2"]
        [refused] = [f for f in frames if f["type"] == "error"]
        assert refused["seq"] > 0, "a session frame, replayed on resume"
        assert (refused["code"], refused["ref"]) == ("rate_limited", "m3")
        stored = await limited_server.runtime.store.list_turns(welcome["session_id"])
        assert "m3" not in {t.client_id for t in stored}
        # In the next window the same message, resent with the same id, goes through.
        await _next_window()
        await client.send({"type": "message", "id": "m3", "text": "Where is my card?"})
        frames = await client.recv_until("reply")
        assert frames[0]["type"] == "ack" and frames[0]["id"] == "m3"
