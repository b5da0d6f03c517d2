"""Per-key token buckets for the client API: login and registration per client IP, failed
password logins per account.

Guarantees: memory is bounded (least recently used keys are forgotten past ``max_keys``);
a refused request learns how long to wait (``retry_after_ms``), as M_LIMIT_EXCEEDED needs.
"""

from __future__ import annotations

import math

from homeserver.config import RateLimitConfig
from homeserver.errors import MatrixError
from homeserver.util.clock import SYSTEM_CLOCK, Clock
from homeserver.util.lru import LruCache


class RateLimiter:
    def __init__(
        self, config: RateLimitConfig, *, max_keys: int = 10_000, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.rate = config.per_second
        self.burst = float(config.burst_count)
        self.max_keys = max_keys
        self._clock = clock
        # key -> (tokens left, monotonic time of the last update)
        self._buckets: LruCache[str, tuple[float, float]] = LruCache(max_keys)

    def check(self, key: str) -> int:
        """Take one token for ``key``: 0 if allowed, else the milliseconds to wait."""
        now = self._clock.monotonic()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            wait = 0
        else:
            self._buckets[key] = (tokens, now)
            wait = max(1, math.ceil((1.0 - tokens) / self.rate * 1000))
        return wait

    def refund(self, key: str) -> None:
        """Give back the token a request took (the per-account login bucket counts failed
        attempts only: a token is taken before the password is checked, so that concurrent
        guesses cannot overrun the bucket, and given back when the password was right)."""
        hit = self._buckets.peek(key)
        if hit is not None:
            self._buckets[key] = (min(self.burst, hit[0] + 1.0), hit[1])

    def enforce(self, key: str) -> None:
        """Raise 429 M_LIMIT_EXCEEDED (with retry_after_ms) when ``key`` is over its limit."""
        wait = self.check(key)
        if wait:
            raise MatrixError(429, "M_LIMIT_EXCEEDED", "Too many requests", retry_after_ms=wait)
