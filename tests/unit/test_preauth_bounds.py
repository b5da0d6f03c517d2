"""The bounds behind the pre-authentication limits (issue 17, findings 2 and 3): the byte
budget of unverified bodies, rate-limited log lines, metric labels only for peers, and a
key ring whose memory, fetches and warnings stay bounded however many names it is given."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from homeserver.crypto.keyring import FAILED_FETCH_BACKOFF_MS, REFETCH_INTERVAL_MS, KeyNotFoundError, KeyRing
from homeserver.crypto.keys import generate_key_line, parse_key_file, server_key_document
from homeserver.errors import FederationRequestError
from homeserver.federation.auth import BodyLimits
from homeserver.metrics import OTHER_PEER, Metrics
from homeserver.storage.keys import StoredKey
from homeserver.util.budget import BudgetExhausted, ByteBudget
from homeserver.util.clock import FakeClock
from homeserver.util.ratelog import RateLimitedLog

# ---------------------------------------------------------------- ByteBudget


async def test_budget_grants_in_order_and_times_out() -> None:
    budget = ByteBudget(100)
    order: list[str] = []

    async def hold(name: str, size: int, gate: asyncio.Event) -> None:
        async with budget.reserve(size, timeout=5):
            order.append(name)
            await gate.wait()

    g1, g2, g3 = asyncio.Event(), asyncio.Event(), asyncio.Event()
    t1 = asyncio.create_task(hold("a", 60, g1))
    await asyncio.sleep(0)
    t2 = asyncio.create_task(hold("b", 60, g2))  # does not fit: waits
    t3 = asyncio.create_task(hold("c", 10, g3))  # would fit, but queues behind b
    await asyncio.sleep(0.01)
    assert order == ["a"] and budget.in_use == 60 and budget.waiting == 2
    with pytest.raises(BudgetExhausted):
        async with budget.reserve(50, timeout=0.01):
            pass
    assert budget.waiting == 2 and budget.in_use == 60
    g1.set()
    await asyncio.sleep(0.01)
    assert order == ["a", "b", "c"] and budget.in_use == 70
    g2.set()
    g3.set()
    await asyncio.gather(t1, t2, t3)
    assert budget.in_use == 0 and budget.waiting == 0


async def test_budget_clamps_a_large_reservation_and_survives_cancellation() -> None:
    budget = ByteBudget(100)
    async with budget.reserve(10_000, timeout=1):
        assert budget.in_use == 100  # alone, not never
        waiter = asyncio.create_task(budget.reserve(5, timeout=5).__aenter__())
        await asyncio.sleep(0.01)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert budget.waiting == 0
    assert budget.in_use == 0


# ---------------------------------------------------------------- body limits


def test_body_limits_per_endpoint() -> None:
    limits = BodyLimits(send=4000, event=300, invite=1000, default=50)
    assert limits.for_path("/_matrix/federation/v1/send/txn") == 4000
    for name in ("send_join", "send_leave", "send_knock", "get_missing_events"):
        for version in ("v1", "v2"):
            assert limits.for_path(f"/_matrix/federation/{version}/{name}/!r:x/$e") == 300
    assert limits.for_path("/_matrix/federation/v2/invite/!r:x/$e") == 1000
    assert limits.for_path("/_matrix/federation/v1/invite/!r:x/$e") == 1000
    for other in ("/_matrix/federation/v1/user/keys/query", "/_matrix/federation/v1/publicRooms",
                  "/_matrix/federation/v1/sendx", "/_matrix/other/send/x", "/_matrix/federation"):
        assert limits.for_path(other) == 50


# ---------------------------------------------------------------- log lines


async def test_rate_limited_log_writes_a_few_lines_and_a_summary(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    logger = logging.getLogger("test.ratelog")
    lines = RateLimitedLog(logger, per_interval=3, interval=60.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="test.ratelog"):
        written = [lines.warning("it failed", extra={"n": i}) for i in range(1000)]
        assert written.count(True) == 3 and lines.suppressed == 997
        assert len(caplog.records) == 3
        await clock.advance(60)
        lines.warning("it failed")
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 5
    assert messages[3] == "it failed (repeated; lines held back)"
    assert caplog.records[3].suppressed == 997  # type: ignore[attr-defined]
    assert lines.suppressed_total == 997


# ---------------------------------------------------------------- metric labels


def _label_values(metrics: Metrics, label: str) -> set[str]:
    return {s.labels[label] for f in metrics.registry.collect() for s in f.samples if label in s.labels}


def test_only_peers_label_metrics_and_only_so_many() -> None:
    metrics = Metrics(max_labelled_peers=3)
    for i in range(500):  # names merely seen (key fetches for strangers)
        metrics.outbound_destination_request_failures.labels(f"stranger{i}.example").inc()
    assert _label_values(metrics, "destination") == {OTHER_PEER}
    for i in range(10):  # peers: only the first three get a label
        metrics.inbound_transactions.labels(f"peer{i}.example").inc()
        metrics.outbound_transactions.labels(f"peer{i}.example", "ok").inc()
    assert len(metrics.peers) == 3
    assert _label_values(metrics, "origin") == {"peer0.example", "peer1.example", "peer2.example", OTHER_PEER}
    metrics.outbound_destination_request_failures.labels("peer1.example").inc()
    assert "peer1.example" in _label_values(metrics, "destination")
    value = metrics.registry.get_sample_value("hs_inbound_transactions_total", {"origin": OTHER_PEER})
    assert value == 7


# ---------------------------------------------------------------- key ring


class _Keys:
    def __init__(self) -> None:
        self.keys: dict[tuple[str, str], StoredKey] = {}

    async def get_key(self, server_name: str, key_id: str) -> StoredKey | None:
        return self.keys.get((server_name, key_id))

    async def store_document(self, server_name: str, document: Any, keys: list[StoredKey], now_ms: int) -> None:
        for key in keys:
            self.keys[(key.server_name, key.key_id)] = key


class _Servers:
    """Key endpoints: up ones answer with a document, others refuse; ``gate`` holds
    every request until set."""

    def __init__(self, clock: FakeClock, up: bool = False) -> None:
        self.clock = clock
        self.key = parse_key_file(generate_key_line())
        self.up = up
        self.requests = 0
        self.running = 0
        self.most_running = 0
        self.gate: asyncio.Event | None = None

    async def get_json(self, destination: str, path: str, **kwargs: Any) -> Any:
        self.requests += 1
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            if self.gate is not None:
                await self.gate.wait()
            if not self.up:
                raise FederationRequestError(destination, "connection refused")
            return server_key_document(destination, self.key, self.clock.time_ms() + 3_600_000)
        finally:
            self.running -= 1

    async def post_json(self, destination: str, path: str, content: Any, **kwargs: Any) -> Any:
        raise AssertionError("no notary configured")


def _keyring(clock: FakeClock, servers: _Servers, **kw: Any) -> KeyRing:
    own = parse_key_file(generate_key_line())
    return KeyRing("us.test", own, _Keys(), servers, [], 5.0, clock=clock, **kw)  # type: ignore[arg-type]


async def test_keyring_memory_and_warnings_stay_bounded_under_origin_churn(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    servers = _Servers(clock)
    keyring = _keyring(clock, servers, failure_cache_size=100, warnings_per_minute=5)
    with caplog.at_level(logging.WARNING, logger="homeserver.crypto.keyring"):
        for i in range(2000):
            with pytest.raises(KeyNotFoundError):
                await keyring.get_verify_key(f"s{i}.example", "ed25519:a")
    assert servers.requests == 2000
    assert keyring.fetch_times_kept == 100
    assert sum(1 for r in caplog.records if r.getMessage() == "key fetch failed") == 5
    # Within the backoff a remembered server is not asked again; past it, it is.
    with pytest.raises(KeyNotFoundError):
        await keyring.get_verify_key("s1999.example", "ed25519:a")
    assert servers.requests == 2000
    await clock.advance(FAILED_FETCH_BACKOFF_MS / 1000)
    with pytest.raises(KeyNotFoundError):
        await keyring.get_verify_key("s1999.example", "ed25519:a")
    assert servers.requests == 2001


async def test_made_up_key_ids_do_not_make_the_keyring_fetch_again() -> None:
    clock = FakeClock()
    servers = _Servers(clock, up=True)
    keyring = _keyring(clock, servers)
    await keyring.get_verify_key("remote.test", servers.key.key_id)
    for i in range(50):
        with pytest.raises(KeyNotFoundError):
            await keyring.get_verify_key("remote.test", f"ed25519:made_up{i}")
    assert servers.requests == 1
    await clock.advance(REFETCH_INTERVAL_MS / 1000)
    with pytest.raises(KeyNotFoundError):
        await keyring.get_verify_key("remote.test", "ed25519:made_up")
    assert servers.requests == 2


async def test_keyring_runs_a_bounded_number_of_fetches_at_once() -> None:
    clock = FakeClock()
    servers = _Servers(clock, up=True)
    servers.gate = asyncio.Event()
    keyring = _keyring(clock, servers, max_concurrent_fetches=3)
    lookups = [
        asyncio.create_task(keyring.get_verify_key(f"s{i % 10}.example", servers.key.key_id)) for i in range(40)
    ]
    await asyncio.sleep(0.05)
    assert servers.running == 3  # ten servers named, three fetched at a time, one each
    servers.gate.set()
    await asyncio.gather(*lookups)
    assert servers.most_running == 3 and servers.requests == 10
