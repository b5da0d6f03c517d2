"""Components that read time take an injected clock: with a FakeClock, what must not happen
before a deadline is checked by moving the clock, not by sleeping (rate limits, UIA session
expiry, /sync long-poll timeouts, the peer-echo warning interval, the key ring's refresh and
failed-fetch backoff, the .well-known cache)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from homeserver.client_api.auth import UIA_SESSION_TTL, UiaSessions
from homeserver.client_api.ratelimit import RateLimiter
from homeserver.config import RateLimitConfig
from homeserver.crypto.keyring import FAILED_FETCH_BACKOFF_MS, KeyNotFoundError, KeyRing
from homeserver.crypto.keys import generate_key_line, parse_key_file, server_key_document
from homeserver.federation.transport import ECHO_WARNING_INTERVAL_SECONDS, EchoMonitor
from homeserver.metrics import Metrics
from homeserver.net.client import FederationRequestError
from homeserver.notifier import Notifier
from homeserver.storage.keys import StoredKey
from homeserver.util.clock import FakeClock


async def _sleeping(clock: FakeClock, n: int = 1) -> None:
    """Until ``n`` tasks sleep on ``clock`` (a task started now sleeps a few loop turns later)."""
    for _ in range(100):
        if clock.sleepers >= n:
            return
        await asyncio.sleep(0)
    raise AssertionError("nothing sleeps on the clock")


async def test_rate_limiter_refills_on_its_clock() -> None:
    clock = FakeClock()
    limiter = RateLimiter(RateLimitConfig(per_second=0.5, burst_count=2), clock=clock)
    assert limiter.check("ip") == 0
    assert limiter.check("ip") == 0
    assert limiter.check("ip") == 2000  # empty: one token comes back in 2 s
    await clock.advance(1.0)
    assert limiter.check("ip") == 1000  # half a token back, still refused
    await clock.advance(1.0)
    assert limiter.check("ip") == 0
    assert limiter.check("other") == 0  # keys are independent


async def test_rate_limiter_forgets_the_least_recently_used_keys() -> None:
    limiter = RateLimiter(RateLimitConfig(per_second=0.001, burst_count=1), max_keys=2, clock=FakeClock())
    assert limiter.check("a") == 0
    assert limiter.check("b") == 0
    assert limiter.check("a") > 0  # a is now the newest
    assert limiter.check("c") == 0  # b is forgotten
    assert limiter.check("a") > 0
    assert limiter.check("b") == 0  # a fresh bucket


async def test_uia_sessions_expire_on_the_clock() -> None:
    clock = FakeClock()
    sessions = UiaSessions(clock)
    sid = sessions.new()
    await clock.advance(UIA_SESSION_TTL - 1)
    assert sessions.completed(sid) == set()
    await clock.advance(1)
    assert sessions.completed(sid) is None


async def test_a_long_poll_times_out_on_the_notifier_clock() -> None:
    clock = FakeClock()
    notifier = Notifier(clock)
    waiter = notifier.waiter("@u:x")
    waiter.watch_rooms(["!r:x"])
    waiting = asyncio.create_task(waiter.wait(30.0))
    await _sleeping(clock)
    await clock.advance(29.9)
    assert not waiting.done()  # nothing woke it, and its 30 s have not passed
    await clock.advance(0.1)
    assert waiting.done() and waiting.result() is False
    notifier.release(waiter)
    assert notifier.waiting == 0


async def test_a_woken_long_poll_returns_at_once_and_drops_its_timer() -> None:
    clock = FakeClock()
    notifier = Notifier(clock)
    waiter = notifier.waiter("@u:x")
    waiter.watch_rooms(["!r:x"])
    waiting = asyncio.create_task(waiter.wait(30.0))
    await _sleeping(clock)
    notifier.wake_room("!r:x")
    assert await waiting is True
    assert clock.sleepers == 0
    assert await waiter.wait(30.0) is True  # woken already: no wait at all
    notifier.release(waiter)


async def test_echo_warnings_are_spaced_on_the_clock(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    echoes = EchoMonitor(10, Metrics(), clock=clock)

    def warnings() -> int:
        return sum(1 for r in caplog.records if r.getMessage() == "peer keeps sending events we already hold")

    with caplog.at_level(logging.WARNING, logger="homeserver.federation.transport"):
        echoes.record("peer.test", 10)
        assert warnings() == 1
        await clock.advance(ECHO_WARNING_INTERVAL_SECONDS - 1)
        echoes.record("peer.test", 10)
        assert warnings() == 1  # over the threshold again, but within the minute
        await clock.advance(1)
        echoes.record("peer.test", 1)
        assert warnings() == 2


class _Keys:
    """KeyStore in memory."""

    def __init__(self) -> None:
        self.keys: dict[tuple[str, str], StoredKey] = {}

    async def get_key(self, server_name: str, key_id: str) -> StoredKey | None:
        return self.keys.get((server_name, key_id))

    async def store_document(self, server_name: str, document: Any, keys: list[StoredKey], now_ms: int) -> None:
        for key in keys:
            self.keys[(key.server_name, key.key_id)] = key


class _Origin:
    """The remote server's key endpoint: documents valid for an hour of the clock, or down."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.key = parse_key_file(generate_key_line())
        self.up = True
        self.requests = 0

    async def get_json(self, destination: str, path: str, **kwargs: Any) -> Any:
        self.requests += 1
        if not self.up:
            raise FederationRequestError(destination, "connection refused")
        return server_key_document(destination, self.key, self.clock.time_ms() + 3_600_000)


def _keyring(clock: FakeClock, origin: _Origin) -> KeyRing:
    own = parse_key_file(generate_key_line())
    return KeyRing("us.test", own, _Keys(), origin, [], 5.0, clock=clock)  # type: ignore[arg-type]  # _Keys


async def test_the_keyring_refetches_a_key_once_its_validity_ends() -> None:
    clock = FakeClock()
    origin = _Origin(clock)
    keyring = _keyring(clock, origin)
    await keyring.get_verify_key("remote.test", origin.key.key_id)
    await clock.advance(3599)
    await keyring.get_verify_key("remote.test", origin.key.key_id)
    assert origin.requests == 1  # still valid: from memory
    await clock.advance(2)
    await keyring.get_verify_key("remote.test", origin.key.key_id)
    assert origin.requests == 2


async def test_the_keyring_backs_off_a_server_whose_fetch_failed() -> None:
    clock = FakeClock()
    origin = _Origin(clock)
    origin.up = False
    keyring = _keyring(clock, origin)
    with pytest.raises(KeyNotFoundError):
        await keyring.get_verify_key("remote.test", origin.key.key_id)
    origin.up = True
    await clock.advance(FAILED_FETCH_BACKOFF_MS / 1000 - 1)
    with pytest.raises(KeyNotFoundError):
        await keyring.get_verify_key("remote.test", origin.key.key_id)
    assert origin.requests == 1  # not asked again within the backoff
    await clock.advance(1)
    await keyring.get_verify_key("remote.test", origin.key.key_id)
    assert origin.requests == 2
