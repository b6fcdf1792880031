"""Failed sign-ins per client address: a guesser is slowed down, then locked out for a while.

Operator keys are long random secrets, so guessing one is hopeless; what the throttle stops
is the cost of trying (every attempt with a well-formed key runs scrypt) and the noise. Pure
policy with an injectable clock; one instance per replica, in memory.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AuthThrottleConfig:
    # This many failures from one address within `window_s` lock it out until the oldest of
    # them is `window_s` old; 0 turns the lockout off.
    max_failures: int = 5
    window_s: float = 300.0
    # Every failed attempt is answered this late, so that one connection cannot race.
    failure_delay_s: float = 0.5
    # Addresses tracked at once; the longest-quiet are forgotten first beyond this.
    max_addresses: int = 10_000

    def __post_init__(self) -> None:
        if self.max_failures < 0 or self.window_s <= 0 or self.failure_delay_s < 0:
            raise ValueError("auth throttle: window_s must be positive, the others 0 or more")


class AuthThrottle:
    def __init__(
        self, config: AuthThrottleConfig, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config
        self._clock = clock
        # address -> times of its recent failures, oldest first; dict order: least recent first.
        self._failures: dict[str, deque[float]] = {}

    def retry_after(self, address: str) -> float:
        """Seconds until `address` may try again; 0 when it may try now."""
        config = self.config
        failures = self._recent(address)
        if not config.max_failures or failures is None or len(failures) < config.max_failures:
            return 0.0
        return max(0.0, failures[-config.max_failures] + config.window_s - self._clock())

    def failed(self, address: str) -> None:
        failures = self._recent(address) or deque(maxlen=max(1, self.config.max_failures))
        failures.append(self._clock())
        self._failures.pop(address, None)
        self._failures[address] = failures
        while len(self._failures) > self.config.max_addresses:
            del self._failures[next(iter(self._failures))]

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)

    def _recent(self, address: str) -> deque[float] | None:
        failures = self._failures.get(address)
        if failures is None:
            return None
        horizon = self._clock() - self.config.window_s
        while failures and failures[0] <= horizon:
            failures.popleft()
        if not failures:
            del self._failures[address]
            return None
        return failures
