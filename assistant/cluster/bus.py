"""This replica's link to Redis (redis.asyncio): commands, pub/sub, and riding out outages.

Redis being unreachable at start or going away later is not an error here: `up` turns
False, `run` and `publish` answer None at once (callers fall back to single-replica
behaviour), one warning is logged per outage, and the supervisor task reconnects with
backoff, subscribes again to every channel wanted and calls `on_up` so that owners can
rewrite what Redis may have lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

T = TypeVar("T")

OnMessage = Callable[[str, bytes], None]

# TimeoutError and ConnectionError are OSErrors.
_LINK_ERRORS = (RedisError, OSError)


class RedisLink:
    def __init__(
        self,
        url: str,
        on_message: OnMessage,
        *,
        on_up: Callable[[], None] | None = None,
        connect_timeout_s: float = 1.0,
        command_timeout_s: float = 2.0,
        max_backoff_s: float = 5.0,
    ) -> None:
        # One retry covers a pooled connection that died while Redis restarted; anything
        # longer is an outage, which the supervisor handles.
        self._client: Redis = Redis.from_url(
            url,
            socket_connect_timeout=connect_timeout_s,
            socket_timeout=command_timeout_s,
            health_check_interval=max(1, round(command_timeout_s)),
            retry=Retry(NoBackoff(), 1),
        )
        self._on_message = on_message
        self._on_up = on_up
        self._max_backoff_s = max_backoff_s
        self._start_timeout_s = connect_timeout_s + 2 * command_timeout_s
        self._channels: set[str] = set()
        self._pubsub: PubSub | None = None
        self._recycle = asyncio.Event()
        self._first_attempt = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._warned = False
        self._connected = False
        self.up = False

    async def start(self, channels: set[str]) -> None:
        """Subscribe to `channels` and keep them; returns after the first connection attempt."""
        self._channels |= channels
        self._task = asyncio.create_task(self._supervise(), name="redis-link")
        # Bounded, so that a Redis that accepts connections but never answers cannot hold
        # up the server's start: it simply starts as a single replica.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._start_timeout_s):
                await self._first_attempt.wait()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.up = False
        with contextlib.suppress(*_LINK_ERRORS):
            await self._client.aclose()

    # pub/sub

    async def subscribe(self, channel: str) -> None:
        self._channels.add(channel)
        pubsub = self._pubsub
        if pubsub is not None:
            # On failure the supervisor reconnects and subscribes to every wanted channel.
            with contextlib.suppress(*_LINK_ERRORS):
                await pubsub.subscribe(channel)

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)
        pubsub = self._pubsub
        if pubsub is not None:
            with contextlib.suppress(*_LINK_ERRORS):
                await pubsub.unsubscribe(channel)

    async def publish(self, channel: str, data: str) -> int | None:
        """How many subscribers got it (0: nobody listens), or None while Redis is down."""
        return await self.run(lambda client: client.publish(channel, data))

    # commands

    async def run(self, operation: Callable[[Redis], Awaitable[T]]) -> T | None:
        """`operation` on the client, or None when Redis is down or the call fails."""
        if not self.up:
            return None
        try:
            return await operation(self._client)
        except _LINK_ERRORS as exc:
            self._lost(exc)
            return None

    # the supervisor

    def _lost(self, exc: BaseException) -> None:
        if not self._warned:
            log.warning(
                "redis unreachable (%s): running as a single replica until it is back",
                type(exc).__name__,
            )
            self._warned = True
        self.up = False
        self._recycle.set()

    async def _supervise(self) -> None:
        backoff = 0.1
        while True:
            self._connected = False
            try:
                await self._listen()
            except _LINK_ERRORS as exc:
                self._lost(exc)
            self._first_attempt.set()
            # After a connection that worked, the first retry comes quickly; then back off.
            backoff = 0.1 if self._connected else min(backoff * 2, self._max_backoff_s)
            await asyncio.sleep(backoff)

    async def _listen(self) -> None:
        async with self._client.pubsub() as pubsub:
            try:
                await pubsub.subscribe(*self._channels)
                # redis-py types ping() for both its sync and async clients.
                await cast("Awaitable[bool]", self._client.ping())
                self._recycle.clear()
                self._pubsub = pubsub
                self._connected = self.up = True
                if self._warned:
                    log.info("redis reachable again")
                    self._warned = False
                self._first_attempt.set()
                if self._on_up is not None:
                    self._on_up()
                while not self._recycle.is_set():
                    message: dict[str, Any] | None = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=1.0
                    )
                    if message is not None and message.get("type") == "message":
                        channel = message["channel"]
                        name = channel.decode() if isinstance(channel, bytes) else str(channel)
                        self._deliver(name, message["data"])
                raise ConnectionError("a command failed: reconnecting")
            finally:
                self._pubsub = None
                self.up = False

    def _deliver(self, channel: str, data: bytes) -> None:
        try:
            self._on_message(channel, data)
        except Exception:
            # A handler's bug must not take the link down with it.
            log.exception("redis message handler failed", extra={"route": channel})
