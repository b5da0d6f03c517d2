"""SRV server discovery end to end: a tiny DNS server on loopback answers SRV queries, and
our FederationClient (``federation.dns_server`` pointing at it) reaches a real server of
ours by the name ``hs.test`` through ``_matrix-fed._tcp.hs.test`` -> localhost:<port>,
with the Host header and the TLS name (SNI, certificate check) being ``hs.test``. Also:
``.well-known`` is tried first, the deprecated ``_matrix._tcp`` is the second choice,
no SRV falls back to port 8448, every SRV target is tried in RFC 2782 order when the
ones before it refuse connections, and the resolver's retry, timeout and caches."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import dns.message as dns_message  # as: the fixture below is named dns
import dns.rcode as dns_rcode
import dns.rrset as dns_rrset
import pytest
from aiohttp import web

from homeserver.config import FederationConfig
from homeserver.crypto.keys import load_key_file, write_new_key_file
from homeserver.crypto.tls import issue_certificate
from homeserver.net.client import FederationClient, FederationRequestError, Target
from homeserver.net.dns import SrvResolver
from tests.conftest import DatabaseFactory
from tests.servers import LOOPBACK_RANGES, free_port, make_config, running_server


class FakeDns(asyncio.DatagramProtocol):
    """Answers SRV queries from ``records`` (NXDOMAIN otherwise), logs every query, and
    drops the first ``drop`` queries (to exercise timeouts and the retry)."""

    def __init__(self) -> None:
        self.records: dict[str, list[tuple[int, int, int, str]]] = {}
        self.queries: list[str] = []
        self.drop = 0
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        query = dns_message.from_wire(data)
        qname = query.question[0].name
        name = qname.to_text(omit_final_dot=True)
        self.queries.append(name)
        if self.drop > 0:
            self.drop -= 1
            return
        response = dns_message.make_response(query)
        answers = self.records.get(name.lower(), [])
        if answers:
            rdatas = [f"{priority} {weight} {port} {target}." for priority, weight, port, target in answers]
            response.answer.append(dns_rrset.from_text(qname, 300, "IN", "SRV", *rdatas))
        else:
            response.set_rcode(dns_rcode.NXDOMAIN)
        assert self.transport is not None
        self.transport.sendto(response.to_wire(), addr)


@pytest.fixture
async def dns() -> AsyncIterator[FakeDns]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(FakeDns, local_addr=("127.0.0.1", 0))
    protocol.port = transport.get_extra_info("sockname")[1]
    try:
        yield protocol
    finally:
        transport.close()


def make_client(tmp_path: Path, dns: FakeDns, ca: Path | None = None, **kw: Any) -> FederationClient:
    key_path = tmp_path / "client.key"
    if not key_path.exists():
        write_new_key_file(key_path)
    kw.setdefault("ip_range_allowlist", list(LOOPBACK_RANGES))  # its peers are on loopback
    config = FederationConfig(
        extra_ca_file=str(ca) if ca else None, dns_server=f"127.0.0.1:{dns.port}",
        connect_timeout=5.0, request_timeout=10.0, **kw,
    )
    return FederationClient("origin.test", load_key_file(key_path), config)


async def test_srv_reaches_real_server_by_name(
    tmp_path: Path, db_factory: DatabaseFactory, test_ca: tuple[Path, Path], dns: FakeDns
) -> None:
    directory = tmp_path / "hs"
    directory.mkdir()
    # the certificate covers the server name hs.test (the TLS check uses it, not the SRV target)
    issue_certificate(directory / "tls.crt", directory / "tls.key",
                      ["hs.test", "localhost", "127.0.0.1"], test_ca[0], test_ca[1])
    port = free_port()
    config = make_config(directory, await db_factory.new_settings(), test_ca, fed_port=port)
    dns.records["_matrix-fed._tcp.hs.test"] = [(10, 0, port, "localhost")]
    # the same target for a name its certificate does not cover: must be refused
    dns.records["_matrix-fed._tcp.other.test"] = [(10, 0, port, "localhost")]
    client = make_client(tmp_path, dns, test_ca[0])
    await client.start()
    try:
        async with running_server(config):
            started = time.monotonic()
            target = await client.resolve("hs.test")
            assert target == Target(f"https://localhost:{port}", "hs.test", "hs.test")
            # .well-known (https://hs.test/...) failed fast: hs.test does not resolve
            assert time.monotonic() - started < 3.0
            assert client._well_known["hs.test"][0] is None
            version = await client.get_json("hs.test", "/_matrix/federation/v1/version", signed=False)
            assert "server" in version
            keys = await client.get_json("hs.test", "/_matrix/key/v2/server", signed=False)
            assert keys["server_name"] == config.server_name
            with pytest.raises(FederationRequestError) as err:
                await client.get_json("other.test", "/_matrix/federation/v1/version", signed=False)
            assert err.value.status is None  # a TLS failure, not an HTTP answer
            assert "certificate" in str(err.value).lower() or "hostname" in str(err.value).lower()
    finally:
        await client.close()


async def test_host_header_and_sni_are_the_server_name(
    tmp_path: Path, test_ca: tuple[Path, Path], dns: FakeDns
) -> None:
    """A TLS echo server reports the Host header and the SNI name it was sent."""
    cert, key = tmp_path / "echo.crt", tmp_path / "echo.key"
    issue_certificate(cert, key, ["hs.test"], test_ca[0], test_ca[1])
    sni: list[str | None] = []
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    ctx.sni_callback = lambda sock, name, _ctx: sni.append(name)

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"host": request.headers.get("Host")})

    app = web.Application()
    app.router.add_get("/echo", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    dns.records["_matrix-fed._tcp.hs.test"] = [(0, 0, port, "localhost")]
    client = make_client(tmp_path, dns, test_ca[0])
    await client.start()
    try:
        body = await client.get_json("hs.test", "/echo")  # signed: Authorization names hs.test
        assert body == {"host": "hs.test"}
        assert sni and sni[-1] == "hs.test"
    finally:
        await client.close()
        await runner.cleanup()


async def test_discovery_order_and_fallbacks(tmp_path: Path, dns: FakeDns) -> None:
    dns.records["_matrix._tcp.old.test"] = [(0, 0, 8449, "fed.old.test")]
    dns.records["_matrix-fed._tcp.new.test"] = [(0, 0, 443, "fed.new.test")]
    dns.records["_matrix._tcp.new.test"] = [(0, 0, 1, "never.test")]
    dns.records["_matrix-fed._tcp.delegate.test"] = [(5, 0, 8450, "fed.delegate.test")]
    client = make_client(tmp_path, dns)
    await client.start()
    log: list[str] = []
    real_well_known = client._well_known_lookup

    async def well_known(host: str, *args: Any) -> str | None:
        log.append(f"well-known {host}")
        log.extend(dns.queries)  # nothing asked of DNS before this point
        if host == "deleg.test":
            return "delegate.test"  # a delegated hostname without port: SRV on it (3.3)
        if host == "deleg-port.test":
            return "delegate.test:9000"  # with a port: no SRV (3.2)
        return await real_well_known(host, *args)

    client._well_known_lookup = well_known  # type: ignore[method-assign]
    try:
        assert await client.resolve("nosrv.test") == Target("https://nosrv.test:8448", "nosrv.test", None)
        assert log == ["well-known nosrv.test"]
        assert dns.queries == ["_matrix-fed._tcp.nosrv.test", "_matrix._tcp.nosrv.test"]
        assert await client.resolve("old.test") == Target("https://fed.old.test:8449", "old.test", "old.test")
        dns.queries.clear()
        assert await client.resolve("new.test") == Target("https://fed.new.test:443", "new.test", "new.test")
        assert dns.queries == ["_matrix-fed._tcp.new.test"]
        assert await client.resolve("deleg.test") == Target(
            "https://fed.delegate.test:8450", "delegate.test", "delegate.test")
        dns.queries.clear()
        assert await client.resolve("deleg-port.test") == Target(
            "https://delegate.test:9000", "delegate.test:9000", None)
        # explicit port and IP literals: neither well-known nor SRV
        log.clear()
        assert await client.resolve("hs.test:8000") == Target("https://hs.test:8000", "hs.test:8000", None)
        assert await client.resolve("127.0.0.1") == Target("https://127.0.0.1:8448", "127.0.0.1", None)
        assert log == [] and dns.queries == []
    finally:
        await client.close()


async def test_real_well_known_fails_fast(tmp_path: Path, dns: FakeDns) -> None:
    client = make_client(tmp_path, dns)
    await client.start()
    try:
        started = time.monotonic()
        assert await client.resolve("nothing.test") == Target("https://nothing.test:8448", "nothing.test", None)
        assert time.monotonic() - started < 3.0
        assert client._well_known["nothing.test"][0] is None
    finally:
        await client.close()


async def test_resolver_retry_timeout_and_caches(dns: FakeDns) -> None:
    dns.records["_matrix-fed._tcp.a.test"] = [(1, 0, 1000, "one.a.test"), (0, 0, 2000, "zero.a.test")]
    resolver = SrvResolver(("127.0.0.1", dns.port), timeout=0.3, attempts=2)
    # the first query is lost: answered by the one retry
    dns.drop = 1
    records = await resolver.lookup("_matrix-fed._tcp.a.test")
    assert records is not None and [r.target for r in records] == ["zero.a.test", "one.a.test"]
    assert len(dns.queries) == 2
    # cached for the record's TTL: no new query
    assert await resolver.lookup("_matrix-fed._tcp.A.test.") == records
    assert len(dns.queries) == 2
    # NXDOMAIN: None, quickly, and cached too
    started = time.monotonic()
    assert await resolver.lookup("_matrix-fed._tcp.none.test") is None
    assert await resolver.lookup("_matrix-fed._tcp.none.test") is None
    assert time.monotonic() - started < 0.3 and len(dns.queries) == 3
    # a nameserver that never answers: None after attempts * timeout, not longer
    dns.drop = 10
    started = time.monotonic()
    assert await resolver.lookup("_matrix-fed._tcp.silent.test") is None
    assert 0.5 < time.monotonic() - started < 1.5
    assert dns.queries[3:] == ["_matrix-fed._tcp.silent.test"] * 2
    # concurrent look-ups of one name share one query; the cache stays bounded
    dns.drop = 0
    small = SrvResolver(("127.0.0.1", dns.port), timeout=0.3, cache_size=2)
    before = len(dns.queries)
    results = await asyncio.gather(*(small.lookup("_matrix-fed._tcp.a.test") for _ in range(5)))
    assert all(r == results[0] for r in results) and len(dns.queries) == before + 1
    for name in ("x.test", "y.test", "z.test"):
        await small.lookup(f"_matrix-fed._tcp.{name}")
    assert len(small._cache) == 2


async def start_echo_sites(
    tmp_path: Path, test_ca: tuple[Path, Path], count: int
) -> tuple[web.AppRunner, list[int], Counter[int]]:
    """``count`` TLS servers for hs.test and err.test on loopback: GET /echo answers the
    Host header, GET /fail answers 500; ``hits`` counts the requests each port received."""
    cert, key = tmp_path / "echo.crt", tmp_path / "echo.key"
    issue_certificate(cert, key, ["hs.test", "err.test"], test_ca[0], test_ca[1])
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    hits: Counter[int] = Counter()

    async def echo(request: web.Request) -> web.Response:
        hits[request.transport.get_extra_info("sockname")[1]] += 1  # type: ignore[union-attr]
        return web.json_response({"host": request.headers.get("Host")})

    async def fail(request: web.Request) -> web.Response:
        hits[request.transport.get_extra_info("sockname")[1]] += 1  # type: ignore[union-attr]
        return web.json_response({"errcode": "M_UNKNOWN", "error": "no"}, status=500)

    app = web.Application()
    app.router.add_get("/echo", echo)
    app.router.add_get("/fail", fail)
    runner = web.AppRunner(app)
    await runner.setup()
    ports = []
    for _ in range(count):
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        ports.append(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
    return runner, ports, hits


async def test_next_srv_target_when_one_refuses(
    tmp_path: Path, test_ca: tuple[Path, Path], dns: FakeDns
) -> None:
    runner, (good, other), hits = await start_echo_sites(tmp_path, test_ca, 2)
    refused, refused_too = free_port(), free_port()  # nothing listens there
    dns.records["_matrix-fed._tcp.hs.test"] = [(0, 0, refused, "localhost"), (10, 0, good, "localhost")]
    dns.records["_matrix-fed._tcp.down.test"] = [(0, 0, refused, "localhost"), (5, 0, refused_too, "localhost")]
    dns.records["_matrix-fed._tcp.err.test"] = [(0, 0, good, "localhost"), (5, 0, other, "localhost")]
    client = make_client(tmp_path, dns, test_ca[0])
    await client.start()
    try:
        # every record is a target, lowest priority first
        assert await client.resolve_all("hs.test") == [
            Target(f"https://localhost:{refused}", "hs.test", "hs.test"),
            Target(f"https://localhost:{good}", "hs.test", "hs.test"),
        ]
        # the first refuses the connection: the request goes to the second, as to hs.test
        assert await client.get_json("hs.test", "/echo") == {"host": "hs.test"}
        assert hits == {good: 1}
        # all refuse: the last one's error, no HTTP status
        with pytest.raises(FederationRequestError) as err:
            await client.get_json("down.test", "/echo")
        assert err.value.status is None and str(refused_too) in str(err.value)
        # an answer, even an error, comes from the server: no other target is tried
        with pytest.raises(FederationRequestError) as err:
            await client.get_json("err.test", "/fail", signed=False)
        assert err.value.status == 500
        assert hits == {good: 2}
    finally:
        await client.close()
        await runner.cleanup()


async def test_srv_targets_in_rfc2782_order(tmp_path: Path, dns: FakeDns) -> None:
    dns.records["_matrix-fed._tcp.order.test"] = [
        (20, 0, 3, "c.order.test"), (10, 1, 1, "a.order.test"), (10, 9, 2, "b.order.test"), (5, 0, 4, "first.test"),
    ]
    client = make_client(tmp_path, dns)
    client._well_known["order.test"] = (None, float("inf"))  # no .well-known look-up
    second: Counter[str] = Counter()
    for _ in range(500):
        targets = await client.resolve_all("order.test")
        assert [t.base_url for t in targets[:1] + targets[3:]] == [
            "https://first.test:4", "https://c.order.test:3"]
        assert {t.base_url for t in targets[1:3]} == {"https://a.order.test:1", "https://b.order.test:2"}
        second[targets[1].base_url] += 1
    # one query (cached for the TTL), the order drawn again for every request: within a
    # priority the weight 9 record comes before the weight 1 one about 9 times in 10
    assert dns.queries == ["_matrix-fed._tcp.order.test"]
    assert 0.82 < second["https://b.order.test:2"] / 500 < 0.97
