"""Attacks before authentication (issue 17, findings 2 and 3), on both engines, loopback only.

- Large bodies with an ``Authorization`` header naming a server that never answers: the
  server resolves the key before it reads a body, so the bodies stay in the sender's
  socket, not in our memory (RSS of a ``python -m homeserver run`` process, from /proc),
  and ``/health`` keeps answering.
- A declared body over the endpoint's limit is refused with 413 before any key is looked
  up; bodies whose signature is not verified yet share one budget of bytes (429 past it).
- Origin churn: thousands of requests with garbage signatures, each naming a new server,
  leave the label series, the /metrics page, the key ring's memory and the log bounded.
- Scraping /metrics renders off the event loop.
"""

from __future__ import annotations

import asyncio
import gc
import io
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from homeserver.config import Config
from homeserver.metrics import OTHER_PEER, Metrics
from homeserver.ops import create_metrics_app
from homeserver.server import RunningServer
from homeserver.storage.database import Database
from homeserver.storage.migrations import migrate
from tests.conftest import DatabaseFactory
from tests.procs import Probe, rss_bytes, server_process, tail, wait_ready, write_config
from tests.servers import free_port, make_config, running_server

MB = 1024 * 1024
KEY_FETCH_TIMEOUT = 3.0


@asynccontextmanager
async def silent_listener() -> AsyncIterator[int]:
    """A TCP port that accepts connections and never says anything (a silent origin)."""
    writers: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await reader.read()  # until the other side gives up
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        for w in writers:
            w.close()
        server.close()


def garbage_header(origin: str, destination: str, key_id: str = "ed25519:a") -> str:
    return f'X-Matrix origin="{origin}",destination="{destination}",key="{key_id}",sig="AAAAAAAA"'


def bloating_transaction(origin: str, size: int) -> bytes:
    """A /send body of about ``size`` bytes made of small objects: parsed (and each PDU
    encoded again for the signature check) it takes several times its size in memory.
    (Made of tinier objects, eight such bodies took the old server past 10 GB.)"""
    head = b'{"origin":"%s","origin_server_ts":1,"pdus":[' % origin.encode()
    item = b'{"k":"' + b"a" * 200 + b'"}'
    n = (size - len(head) - 2) // (len(item) + 1)
    return head + b",".join([item] * n) + b"]}"


def padded_json(size: int) -> bytes:
    """A JSON object of exactly ``size`` bytes."""
    return b'{"x":"' + b"a" * (size - 8) + b'"}'


def subprocess_config(tmp_path: Path, settings: dict[str, str], ca: tuple[Path, Path]) -> tuple[Config, int, int]:
    client_port, metrics_port = free_port(), free_port()
    config = make_config(tmp_path / "hs", settings, ca, extra={
        "listeners": {
            "client": {"bind": "127.0.0.1", "port": client_port},
            "metrics": {"enabled": True, "bind": "127.0.0.1", "port": metrics_port},
        },
        "federation": {"key_fetch_timeout": KEY_FETCH_TIMEOUT},
    })
    return config, client_port, metrics_port


def tls(ca: tuple[Path, Path]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca[0]))


# ---------------------------------------------------------------- finding 2: bodies


async def test_bodies_are_not_read_before_the_key_is_found(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    """Eight concurrent 3.9 MB /send bodies naming a silent origin: RSS grows by less than
    50 MB and /health answers throughout (before: every body was read and parsed, then
    held during the key fetch: well over a hundred MB)."""
    config, client_port, _ = subprocess_config(tmp_path, await db_factory.new_settings(), test_ca)
    cfg_file = write_config(config, tmp_path / "hs.yaml")
    log = tmp_path / "server.log"
    fed = f"https://localhost:{config.listeners.federation.port}"
    health = f"http://127.0.0.1:{client_port}/health"
    try:
        async with silent_listener() as warm_port, silent_listener() as silent_port, aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=tls(test_ca), limit=0)
        ) as s:
            body = bloating_transaction(f"127.0.0.1:{silent_port}", 3_900_000)

            async def put(i: int, origin: str, data: bytes) -> tuple[int, Any]:
                header = garbage_header(origin, config.server_name, f"ed25519:k{i}")
                async with s.put(f"{fed}/_matrix/federation/v1/send/t{i}", data=io.BytesIO(data), headers={
                    "Authorization": header, "Content-Type": "application/json",
                }) as r:
                    return r.status, await r.json()

            with server_process(cfg_file, log) as proc:
                await wait_ready(s, health, proc)
                # Warm-up (TLS, the key fetch path) with small bodies and another silent origin.
                warm = await asyncio.gather(*(put(i, f"127.0.0.1:{warm_port}", b"{}") for i in range(2)))
                assert [st for st, _ in warm] == [401, 401], warm
                baseline = rss_bytes(proc.pid)
                started = time.monotonic()
                async with Probe(proc.pid, s, health) as probe:
                    replies = await asyncio.gather(
                        *(put(i, f"127.0.0.1:{silent_port}", body) for i in range(8))
                    )
                    await asyncio.sleep(0.2)
                elapsed = time.monotonic() - started
                growth = probe.peak_rss - baseline
                print(f"[{db_factory.engine}] RSS {baseline / MB:.0f} MB -> peak {probe.peak_rss / MB:.0f} MB "
                      f"(+{growth / MB:.1f} MB) in {elapsed:.1f} s; /health max "
                      f"{max(probe.health_seconds) * 1000:.0f} ms over {len(probe.health_seconds)} probes")
                assert all(st == 401 and b["errcode"] == "M_UNAUTHORIZED" for st, b in replies), replies
                assert growth < 50 * MB
                assert len(probe.health_seconds) >= 10
                assert set(probe.health_statuses) == {200}
                assert max(probe.health_seconds) < 1.0
                assert proc.poll() is None
    except BaseException:
        print(f"--- server log tail ({log}) ---\n{tail(log)}")
        raise


async def test_oversized_bodies_are_refused_before_any_key_is_looked_up(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    """Each endpoint has its own body limit; a declared body over it is answered 413
    M_TOO_LARGE at once, without fetching the named origin's key. Under the limit, the
    request goes on to the signature check."""
    config = make_config(tmp_path / "hs", await db_factory.new_settings(), test_ca, extra={
        "federation": {"key_fetch_timeout": KEY_FETCH_TIMEOUT},
    })
    async with running_server(config) as server, silent_listener() as silent_port, aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=tls(test_ca))
    ) as s:
        fed = f"https://localhost:{server.federation_port}"
        stranger = garbage_header(f"127.0.0.1:{silent_port}", config.server_name)
        own_key = server.services.signing_key.key_id
        forged = garbage_header(config.server_name, config.server_name, own_key)  # a known key, a bad signature

        async def send(method: str, path: str, header: str, size: int) -> tuple[int, Any, float]:
            started = time.monotonic()
            async with s.request(method, fed + path, data=io.BytesIO(padded_json(size)), headers={
                "Authorization": header, "Content-Type": "application/json",
            }) as r:
                return r.status, await r.json(), time.monotonic() - started

        limits = config.federation_limits
        cases = [
            ("POST", "/_matrix/federation/v1/get_missing_events/!r:x", limits.event_body_bytes),
            ("POST", "/_matrix/federation/v1/user/keys/query", limits.default_body_bytes),
            ("POST", "/_matrix/federation/v1/publicRooms", limits.default_body_bytes),
            ("PUT", "/_matrix/federation/v2/send_join/!r:x/$e", limits.event_body_bytes),
            ("PUT", "/_matrix/federation/v1/send_knock/!r:x/$e", limits.event_body_bytes),
            ("PUT", "/_matrix/federation/v2/invite/!r:x/$e", limits.invite_body_bytes),
            ("PUT", "/_matrix/federation/v1/send/t1", config.inbound.max_transaction_bytes),
        ]
        for method, path, limit in cases:
            status, body, took = await send(method, path, stranger, limit + 1)
            assert (status, body["errcode"]) == (413, "M_TOO_LARGE"), (path, status, body)
            assert took < KEY_FETCH_TIMEOUT - 1, (path, took)
        assert server.services.keyring.fetches == 0
        # At the limit: not refused for its size; the signature check refuses it.
        for method, path, limit in cases:
            status, body, _ = await send(method, path, forged, limit)
            assert (status, body["errcode"]) == (401, "M_UNAUTHORIZED"), (path, status, body)
            assert "signature" in body["error"]
        refused = server.services.metrics.registry.get_sample_value(
            "hs_inbound_requests_refused_total", {"reason": "too_large"}
        )
        assert refused == len(cases)


async def test_unverified_bodies_share_one_budget(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    """A sender that stalls in the middle of a body holds its share of the budget of
    unverified bodies; another body that does not fit waits, then gets 429
    M_LIMIT_EXCEEDED. Requests without a body are not held up; once the stalled sender
    is gone, bodies are read again."""
    config = make_config(tmp_path / "hs", await db_factory.new_settings(), test_ca, extra={
        "federation_limits": {"unverified_body_bytes": 1_000_000, "unverified_body_wait_seconds": 0.5},
    })
    async with running_server(config) as server, aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=tls(test_ca))
    ) as s:
        fed_port = server.federation_port
        forged = garbage_header(config.server_name, config.server_name, server.services.signing_key.key_id)
        registry = server.services.metrics.registry

        def reserved() -> float:
            return registry.get_sample_value("hs_inbound_unverified_body_bytes") or 0.0

        async def put(size: int) -> tuple[int, Any]:
            url = f"https://localhost:{fed_port}/_matrix/federation/v1/send/t"
            async with s.put(url, data=io.BytesIO(padded_json(size)),
                             headers={"Authorization": forged, "Content-Type": "application/json"}) as r:
                return r.status, await r.json()

        # 1. A sender announces 900 kB, sends 1 kB and stalls.
        _reader, writer = await asyncio.open_connection(
            "127.0.0.1", fed_port, ssl=tls(test_ca), server_hostname="localhost"
        )
        writer.write(
            b"PUT /_matrix/federation/v1/send/stall HTTP/1.1\r\nHost: localhost\r\n"
            + f"Authorization: {forged}\r\n".encode()
            + b"Content-Type: application/json\r\nContent-Length: 900000\r\n\r\n"
            + b'{"x":"' + b"a" * 1000
        )
        await writer.drain()
        deadline = time.monotonic() + 5
        while reserved() != 900_000:
            assert time.monotonic() < deadline, reserved()
            await asyncio.sleep(0.02)
        # 2. Another 900 kB body does not fit: it waits, then 429.
        started = time.monotonic()
        status, body = await put(900_000)
        assert (status, body["errcode"]) == (429, "M_LIMIT_EXCEEDED"), body
        assert body["retry_after_ms"] > 0
        assert time.monotonic() - started >= 0.4
        # A request without a body is not held up.
        async with s.get(f"https://localhost:{fed_port}/_matrix/federation/v1/query/profile?user_id=%40a%3Ab",
                         headers={"Authorization": forged}) as r:
            assert r.status == 401
        # 3. The stalled sender goes away: its share comes back, bodies are read again.
        writer.close()
        deadline = time.monotonic() + 5
        while reserved() != 0:
            assert time.monotonic() < deadline, reserved()
            await asyncio.sleep(0.02)
        status, body = await put(900_000)
        assert (status, body["errcode"]) == (401, "M_UNAUTHORIZED"), body
        assert registry.get_sample_value("hs_inbound_requests_refused_total", {"reason": "busy"}) == 1


async def test_a_send_waiting_for_its_key_does_not_hold_the_worker_or_the_collector(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    """The /send fast path (the inbound worker gives way, the garbage collector waits)
    starts once the origin's key is found: a /send naming a silent server holds neither
    for the whole key fetch (before: both, for as long as such requests kept coming)."""
    config = make_config(tmp_path / "hs", await db_factory.new_settings(), test_ca, extra={
        "federation": {"key_fetch_timeout": KEY_FETCH_TIMEOUT},
    })
    async with running_server(config) as server, silent_listener() as silent_port, aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=tls(test_ca))
    ) as s:
        header = garbage_header(f"127.0.0.1:{silent_port}", config.server_name)

        async def put() -> int:
            async with s.put(f"https://localhost:{server.federation_port}/_matrix/federation/v1/send/t",
                             data=b'{"pdus":[]}', headers={"Authorization": header}) as r:
                return r.status

        worker = server.services.inbound_worker
        pending = asyncio.create_task(put())
        await asyncio.sleep(1.0)
        assert not pending.done()  # waiting for the key
        assert not worker.holding_back
        assert gc.isenabled()
        assert await pending == 401


# ---------------------------------------------------------------- finding 3: origin churn


def closed_ports(count: int, start: int = 42000) -> list[int]:
    """Loopback ports nobody listens on (right now), for origins that refuse at once."""
    import socket

    ports: list[int] = []
    port = start
    while len(ports) < count and port < 65000:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
                ports.append(port)
            except OSError:
                pass
        port += 1
    return ports


def peer_label_values(page: str) -> set[str]:
    values: set[str] = set()
    for family in text_string_to_metric_families(page):
        for sample in family.samples:
            for name in ("origin", "destination"):
                if name in sample.labels:
                    values.add(sample.labels[name])
    return values


async def test_origin_churn_leaves_memory_metrics_and_log_bounded(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    """1,500 requests with garbage signatures, each naming a new origin (a loopback port
    that refuses): no label series per name (all under "(other)"), a /metrics page that
    does not grow with the names, a few "key fetch failed" lines instead of one per name,
    RSS growth below 50 MB. Before: a series per name in the per-destination metrics and a
    WARNING line per name."""
    config, client_port, metrics_port = subprocess_config(tmp_path, await db_factory.new_settings(), test_ca)
    cfg_file = write_config(config, tmp_path / "hs.yaml")
    log = tmp_path / "server.log"
    fed = f"https://localhost:{config.listeners.federation.port}"
    health = f"http://127.0.0.1:{client_port}/health"
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    ports = closed_ports(1550)
    path = "/_matrix/federation/v1/query/profile?user_id=%40a%3Ab"
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls(test_ca), limit=32)) as s:

            async def probe(port: int) -> int:
                header = garbage_header(f"127.0.0.1:{port}", config.server_name)
                async with s.get(fed + path, headers={"Authorization": header}) as r:
                    await r.read()
                    return r.status

            async def scrape() -> tuple[str, float]:
                started = time.monotonic()
                async with s.get(metrics_url) as r:
                    return await r.text(), time.monotonic() - started

            with server_process(cfg_file, log) as proc:
                await wait_ready(s, health, proc)
                warm = await asyncio.gather(*(probe(p) for p in ports[:50]))
                assert set(warm) == {401}
                page_before, _ = await scrape()
                baseline = rss_bytes(proc.pid)
                started = time.monotonic()
                async with Probe(proc.pid, s, health, interval=0.2) as p:
                    statuses = await asyncio.gather(*(probe(port) for port in ports[50:]))
                elapsed = time.monotonic() - started
                page, scrape_seconds = await scrape()
                growth = p.peak_rss - baseline
                failed_lines = sum(1 for line in log.read_text(errors="replace").splitlines()
                                   if "key fetch failed" in line)
                print(f"[{db_factory.engine}] {len(ports)} origins in {elapsed:.1f} s: RSS +{growth / MB:.1f} MB, "
                      f"/metrics {len(page_before)} -> {len(page)} bytes (scrape {scrape_seconds * 1000:.0f} ms), "
                      f"{failed_lines} 'key fetch failed' lines, /health max {max(p.health_seconds) * 1000:.0f} ms")
                assert set(statuses) == {401}
                labels = peer_label_values(page)
                assert not any(v.startswith("127.0.0.1:") for v in labels), sorted(labels)[:5]
                assert len(page) < len(page_before) + 20_000
                assert failed_lines <= 12
                assert growth < 50 * MB
                assert set(p.health_statuses) == {200}
                assert proc.poll() is None
    except BaseException:
        print(f"--- server log tail ({log}) ---\n{tail(log)}")
        raise


async def test_authenticated_peers_get_their_own_label(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    """A server that authenticated a request to us is a peer: the outbound metrics name it;
    a server that was only named in a request is counted under "(other)"."""
    a_cfg = make_config(tmp_path / "a", await db_factory.new_settings(), test_ca)
    b_cfg = make_config(tmp_path / "b", await db_factory.new_settings(), test_ca)
    async with running_server(a_cfg) as a, running_server(b_cfg) as b:
        # B authenticates to A (A fetches B's key: an outbound request to a stranger).
        status = await _probe_as(b, a)
        assert status == 404
        registry = a.services.metrics.registry
        seconds = "hs_outbound_destination_request_seconds_count"
        assert registry.get_sample_value(seconds, {"destination": OTHER_PEER}) == 1
        assert registry.get_sample_value(seconds, {"destination": b_cfg.server_name}) is None
        # Authenticated: now a peer, and A's next request to B is labelled with B's name.
        assert a.services.metrics.peers.label(b_cfg.server_name) == b_cfg.server_name
        await a.services.federation_client.get_json(
            b_cfg.server_name, "/_matrix/federation/v1/version", signed=False
        )
        assert registry.get_sample_value(seconds, {"destination": b_cfg.server_name}) == 1
        assert registry.get_sample_value(seconds, {"destination": OTHER_PEER}) == 1


async def _probe_as(sender: RunningServer, receiver: RunningServer) -> int | None:
    from homeserver.errors import FederationRequestError

    try:
        await sender.services.federation_client.get_json(
            receiver.services.config.server_name, "/_matrix/federation/v1/query/nothing"
        )
    except FederationRequestError as e:
        return e.status
    return 200


# ---------------------------------------------------------------- finding 3: /metrics


async def test_scraping_a_large_registry_does_not_block_the_loop(db: Database) -> None:
    """However large the registry, rendering it runs off the event loop: a ticker keeps
    ticking while a multi-megabyte page is produced (before: rendered on the loop, which
    stood still for the whole rendering: about a second for this page)."""
    await migrate(db)
    metrics = Metrics()
    histogram = metrics.outbound_destination_request_seconds.metric
    failures = metrics.outbound_destination_request_failures.metric
    for i in range(3000):  # past any bound on purpose: the page is large
        histogram.labels(f"s{i}.example").observe(0.1)
        failures.labels(f"s{i}.example").inc()
    server = TestServer(create_metrics_app(db, metrics), host="127.0.0.1")
    await server.start_server()
    gaps: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(server.make_url("/metrics")) as r:  # warm-up
                await r.read()
            task = asyncio.create_task(ticker())
            await asyncio.sleep(0.05)
            gaps.clear()
            gc.disable()  # collections pause the loop wherever they run: not what is measured
            try:
                started = time.perf_counter()
                async with s.get(server.make_url("/metrics")) as r:
                    page = await r.read()
                took = time.perf_counter() - started
            finally:
                gc.enable()
            stop.set()
            await task
    finally:
        await server.close()
    print(f"/metrics: {len(page)} bytes in {took * 1000:.0f} ms; longest loop gap {max(gaps) * 1000:.1f} ms")
    assert len(page) > 1_000_000
    # On an idle machine the longest gap is a few ms (the interpreter's switch interval);
    # the bound leaves room for a loaded one, and stays far below the rendering time.
    assert max(gaps) < 0.25
    assert max(gaps) < took / 3
