"""``presence``: online status (presence/service.py, docs/presence.md). Apart from
``config.py`` so that the presence section stays one field there."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from homeserver.config_typed import ConfigError


@dataclass(frozen=True, slots=True)
class PresenceConfig:
    # Online status (docs/presence.md). Off: PUT /presence is accepted but nothing is kept,
    # shown or sent; /sync has no presence; received presence is dropped.
    enabled: bool = True
    # Online with no activity for this long -> unavailable; no /sync for this long -> offline.
    idle_timeout_seconds: float = 300.0
    offline_timeout_seconds: float = 30.0
    # At most one update per user per destination per this many seconds (the latest wins).
    federation_interval_seconds: float = 10.0
    # Remote users whose presence is remembered (the least recently updated is forgotten),
    # and outbound updates held back by the rate limit (the oldest is dropped).
    max_remote_users: int = 10_000
    max_pending_updates: int = 100_000

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if f.name != "enabled" and getattr(self, f.name) <= 0:
                raise ConfigError(f"presence.{f.name}: must be positive")
