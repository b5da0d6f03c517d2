"""``media.remote_fetch``: the bounds of fetching other servers' media over federation
(``media/remote.py``, docs/media.md "Over federation"). Apart from ``config.py`` so that
the media section stays one field there."""

from __future__ import annotations

from dataclasses import dataclass

from homeserver.config_typed import ConfigError


@dataclass(frozen=True, slots=True)
class RemoteFetchConfig:
    # Seconds one fetch may take in all (waiting for a slot, connecting, the transfer, the
    # store); fetches running at once in all and per remote server; running or waiting in
    # all (past it a fetch is refused at once).
    timeout: float = 60.0
    max_concurrent: int = 10
    max_per_host: int = 2
    max_pending: int = 100

    def __post_init__(self) -> None:
        for name in ("timeout", "max_concurrent", "max_per_host", "max_pending"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"media.remote_fetch.{name}: must be positive")
