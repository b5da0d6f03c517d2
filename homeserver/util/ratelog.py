"""Log lines that an outsider can cause, at a bounded rate."""

from __future__ import annotations

import logging
from typing import Any

from homeserver.util.clock import SYSTEM_CLOCK, Clock


class RateLimitedLog:
    """At most ``per_interval`` lines per ``interval`` seconds of one kind of message.

    Lines past that are counted, not written; the first line of a later interval is
    preceded by one summary line saying how many were held back. A flood of new server
    names therefore costs a few lines a minute, not one line per request."""

    def __init__(
        self,
        logger: logging.Logger,
        per_interval: int = 10,
        interval: float = 60.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._log = logger
        self.per_interval = per_interval
        self.interval = interval
        self._clock = clock
        self._window_start = float("-inf")
        self._written = 0
        self.suppressed = 0  # held back in the current interval
        self.suppressed_total = 0

    def log(self, level: int, msg: str, extra: dict[str, Any] | None = None) -> bool:
        """Write the line unless this interval's quota is spent; whether it was written."""
        now = self._clock.monotonic()
        if now - self._window_start >= self.interval:
            if self.suppressed:
                self._log.log(
                    level, f"{msg} (repeated; lines held back)",
                    extra={"suppressed": self.suppressed, "interval_seconds": self.interval},
                )
            self._window_start = now
            self._written = 0
            self.suppressed = 0
        if self._written >= self.per_interval:
            self.suppressed += 1
            self.suppressed_total += 1
            return False
        self._written += 1
        self._log.log(level, msg, extra=extra)
        return True

    def warning(self, msg: str, extra: dict[str, Any] | None = None) -> bool:
        return self.log(logging.WARNING, msg, extra)
