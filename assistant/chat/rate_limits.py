"""Message rate limits per connection and per user, in fixed windows.

A connection's count lives in this process (a connection never moves). A user's count is
shared by every replica when a shared counter (Redis) is given, so opening connections on
several replicas does not multiply the allowance; while that counter is unreachable each
replica counts the user on its own.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

# Adds one to `key` and returns the new count, expiring it after `ttl_s`; None: unreachable.
SharedCounter = Callable[[str, float], Awaitable[int | None]]


@dataclass(frozen=True, slots=True)
class RateLimits:
    """How many `message` frames fit in one window; 0 means no limit."""

    window_s: float = 10.0
    per_connection: int = 50
    per_user: int = 100

    def __post_init__(self) -> None:
        if self.window_s <= 0 or self.per_connection < 0 or self.per_user < 0:
            raise ValueError("rate limits: window_s must be positive, limits 0 or more")


def window_of(now: float, window_s: float) -> int:
    """The number of the fixed window holding `now` (seconds since the epoch)."""
    return math.floor(now / window_s)


class LocalCounts:
    """Counters for the current window only; earlier windows are dropped as time moves on."""

    def __init__(self) -> None:
        self._window = -1
        self._counts: dict[str, int] = {}

    def hit(self, key: str, window: int) -> int:
        if window != self._window:
            self._window = window
            self._counts = {}
        count = self._counts.get(key, 0) + 1
        self._counts[key] = count
        return count

    def forget(self, key: str) -> None:
        self._counts.pop(key, None)


class RateLimiter:
    def __init__(
        self,
        limits: RateLimits,
        shared: SharedCounter | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.limits = limits
        self._shared = shared
        self._clock = clock
        self._local = LocalCounts()

    async def allow_message(self, connection_id: str, user_id: str) -> bool:
        """Count one message; False when it is over the connection's or the user's limit."""
        limits = self.limits
        window = window_of(self._clock(), limits.window_s)
        connection_count = self._local.hit(f"c:{connection_id}", window)
        if limits.per_connection and connection_count > limits.per_connection:
            return False
        if limits.per_user:
            key = f"u:{user_id}"
            count = None
            if self._shared is not None:
                # The key names its window, so expiring it one window later is enough.
                count = await self._shared(f"{key}:{window}", limits.window_s * 2)
            if count is None:
                count = self._local.hit(key, window)
            if count > limits.per_user:
                return False
        return True

    def forget_connection(self, connection_id: str) -> None:
        self._local.forget(f"c:{connection_id}")
