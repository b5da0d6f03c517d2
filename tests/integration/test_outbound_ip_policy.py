"""The outbound IP-range policy (issue 17, finding 4: server-side request forgery).

A server with the default policy never connects to loopback, private or other denied
addresses, whoever names them: an unauthenticated request's X-Matrix origin (the key
fetch), an SRV record, a ``.well-known`` redirect. A listening socket counts the
connections it accepts, so "refused" means no connection was made at all, not a
connection that failed later. Clients asking for another server's data (directory,
alias, join, profile) get 502 M_UNKNOWN with one generic text, never the connection error
that would tell an open port from a closed one.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web

from homeserver.client_api.common import REMOTE_FAILURE
from homeserver.config import FederationConfig
from homeserver.crypto.keys import generate_key_line, load_key_file, parse_key_file, write_new_key_file
from homeserver.crypto.tls import issue_certificate
from homeserver.crypto.xmatrix import authorization_header
from homeserver.net.client import MAX_WELL_KNOWN_REDIRECTS, FederationClient, FederationRequestError
from homeserver.server import RunningServer
from tests.clients import nio_user, raw
from tests.conftest import DatabaseFactory
from tests.integration.test_srv_discovery import FakeDns
from tests.servers import make_config, running_server

DEFAULT_POLICY = {"federation": {"ip_range_allowlist": [], "key_fetch_timeout": 3.0, "connect_timeout": 3.0}}


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


class AcceptCounter:
    """A TCP listener on ``host`` that counts the connections it accepts (and drops them)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.accepted = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> AcceptCounter:
        self._server = await asyncio.start_server(self._handle, self.host, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        writer.close()

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


@pytest.fixture
async def dns() -> AsyncIterator[FakeDns]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(FakeDns, local_addr=("127.0.0.1", 0))
    protocol.port = transport.get_extra_info("sockname")[1]
    try:
        yield protocol
    finally:
        transport.close()


def make_client(tmp_path: Path, **kw: Any) -> FederationClient:
    key_path = tmp_path / "client.key"
    if not key_path.exists():
        write_new_key_file(key_path)
    kw.setdefault("connect_timeout", 3.0)
    return FederationClient("origin.test", load_key_file(key_path), FederationConfig(**kw))


async def unauthenticated_probe(server: RunningServer, origin: str) -> int:
    """A federation request claiming to come from ``origin`` (garbage signature): our
    server looks for ``origin``'s key before it can refuse it."""
    destination = server.services.config.server_name
    uri = "/_matrix/federation/v1/query/profile?user_id=%40a%3Ab"
    key = parse_key_file(generate_key_line())
    header = authorization_header(key, origin, destination, "GET", uri)
    port = server.services.config.listeners.federation.port
    async with aiohttp.ClientSession() as s, s.get(
        f"https://127.0.0.1:{port}{uri}", headers={"Authorization": header}, ssl=False,
        timeout=aiohttp.ClientTimeout(total=20),
    ) as resp:
        return resp.status


async def test_origin_named_by_unauthenticated_request_is_never_connected_to(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    config = make_config(tmp_path / "hs", await db_factory.new_settings(), test_ca, extra=DEFAULT_POLICY)
    async with AcceptCounter("127.0.0.1") as v4, AcceptCounter("127.0.0.2") as v4b, running_server(config) as hs:
        origins = [
            f"127.0.0.1:{v4.port}",
            f"localhost:{v4.port}",  # a DNS name that resolves to loopback
            f"127.0.0.2:{v4b.port}",
            f"[::ffff:127.0.0.1]:{v4.port}",  # IPv4-mapped IPv6 form of a loopback address
            "10.0.0.1:8448",
            "169.254.169.254:80",
            "100.64.0.1:8448",
            "[fd00::1]:8448",
        ]
        if has_ipv6_loopback():
            async with AcceptCounter("::1") as v6:
                origins.append(f"[::1]:{v6.port}")
                started = time.monotonic()
                statuses = [await unauthenticated_probe(hs, o) for o in origins]
                await asyncio.sleep(0.2)
                assert v6.accepted == 0
        else:  # pragma: no cover - hosts without IPv6 loopback
            started = time.monotonic()
            statuses = [await unauthenticated_probe(hs, o) for o in origins]
            await asyncio.sleep(0.2)
        # refused before any connection: no connect timeout was waited for anywhere
        assert time.monotonic() - started < 5.0
        assert statuses == [401] * len(origins)
        assert (v4.accepted, v4b.accepted) == (0, 0)

    # The control: with loopback allowed, the same request does make the connection.
    config = make_config(tmp_path / "hs2", await db_factory.new_settings(), test_ca)
    async with AcceptCounter("127.0.0.1") as v4, running_server(config) as hs:
        assert await unauthenticated_probe(hs, f"127.0.0.1:{v4.port}") == 401
        assert v4.accepted >= 1


async def test_client_refuses_denied_addresses_before_connecting(tmp_path: Path) -> None:
    """Every denied range is refused by the policy itself (the error says so), not by the
    network; a name resolving to loopback is refused at connect time."""
    client = make_client(tmp_path)
    await client.start()
    try:
        async with AcceptCounter("127.0.0.1") as counter:
            for destination in ("10.1.2.3:8448", "172.16.0.1:8448", "192.168.1.1:8448", "169.254.169.254:80",
                                "100.64.0.1:8448", "0.0.0.0:8448", "224.0.0.1:8448", "[fe80::1]:8448",
                                "[fc00::1]:8448", "[fec0::1]:8448", "[::]:8448", "[64:ff9b::7f00:1]:8448",
                                "[2002:7f00:1::]:8448", f"127.0.0.1:{counter.port}", f"localhost:{counter.port}"):
                with pytest.raises(FederationRequestError) as err:
                    await client.get_json(destination, "/_matrix/federation/v1/version", signed=False)
                assert "denied IP range" in str(err.value), destination
            # the key-fetch pool is guarded the same way
            with pytest.raises(FederationRequestError) as err:
                await client.keys.get_json(f"localhost:{counter.port}", "/_matrix/key/v2/server")
            assert "denied IP range" in str(err.value)
            assert counter.accepted == 0
    finally:
        await client.close()


async def test_srv_record_pointing_at_loopback_is_refused(tmp_path: Path, dns: FakeDns) -> None:
    """A public-looking name whose SRV target resolves to a private address (the project's
    local DNS server answers the SRV query; ``localhost`` resolves to 127.0.0.1)."""
    async with AcceptCounter("127.0.0.1") as counter:
        dns.records["_matrix-fed._tcp.evil.test"] = [(10, 0, counter.port, "localhost")]
        dns.records["_matrix-fed._tcp.evil2.test"] = [(10, 0, counter.port, "127.0.0.1")]
        client = make_client(tmp_path, dns_server=f"127.0.0.1:{dns.port}")
        await client.start()
        try:
            for name in ("evil.test", "evil2.test"):
                with pytest.raises(FederationRequestError) as err:
                    await client.get_json(name, "/_matrix/federation/v1/version", signed=False)
                assert "denied IP range" in str(err.value)
            assert dns.queries[:1] == ["_matrix-fed._tcp.evil.test"]
            assert counter.accepted == 0
        finally:
            await client.close()


async def test_well_known_redirects_only_to_allowed_https_and_bounded(
    tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    """The .well-known server is on 127.0.0.2, the only allowed range; its redirects to
    127.0.0.1 (an IP literal, and ``localhost``) are not followed, nor are plain-http or
    endless ones; a redirect to an allowed https URL is."""
    cert, key = tmp_path / "wk.crt", tmp_path / "wk.key"
    issue_certificate(cert, key, ["127.0.0.2"], test_ca[0], test_ca[1])
    hits: list[str] = []
    async with AcceptCounter("127.0.0.1") as counter:
        def redirect(to: str) -> Any:
            async def handler(request: web.Request) -> web.Response:
                hits.append(request.path)
                raise web.HTTPFound(to)
            return handler

        async def final(request: web.Request) -> web.Response:
            hits.append(request.path)
            return web.json_response({"m.server": "delegated.test:443"})

        app = web.Application()
        app.add_routes([
            web.get("/literal", redirect(f"https://127.0.0.1:{counter.port}/.well-known/matrix/server")),
            web.get("/name", redirect(f"https://localhost:{counter.port}/.well-known/matrix/server")),
            web.get("/plain", redirect("http://127.0.0.2:1/final")),
            web.get("/loop", redirect("/loop")),
            web.get("/ok", redirect("/ok2")),
            web.get("/ok2", redirect("/final")),
            web.get("/final", final),
        ])
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        site = web.TCPSite(runner, "127.0.0.2", 0, ssl_context=ctx)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        client = make_client(tmp_path, extra_ca_file=str(test_ca[0]), ip_range_allowlist=["127.0.0.2/32"])
        await client.start()
        try:
            base = f"https://127.0.0.2:{port}"
            assert await client.fetch_well_known(f"{base}/ok") == "delegated.test:443"
            assert hits == ["/ok", "/ok2", "/final"]
            for path in ("/literal", "/name", "/plain"):
                assert await client.fetch_well_known(base + path) is None, path
            hits.clear()
            assert await client.fetch_well_known(f"{base}/loop") is None
            assert len(hits) == MAX_WELL_KNOWN_REDIRECTS + 1
            assert counter.accepted == 0
        finally:
            await client.close()
            await runner.cleanup()


async def test_clients_get_a_generic_502_for_remote_failures(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    """A closed port and a denied address answer the same: 502 M_UNKNOWN, one text."""
    config = make_config(tmp_path / "hs", await db_factory.new_settings(), test_ca,
                         extra={"federation": {"connect_timeout": 2.0}})
    async with running_server(config) as hs, nio_user(hs) as user:
        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            closed = f"127.0.0.1:{s.getsockname()[1]}"
        answers = []
        for host in (closed, "10.0.0.1:8448", f"localhost:{closed.rsplit(':', 1)[1]}"):
            for method, path in (
                ("GET", f"/_matrix/client/v3/publicRooms?server={quote(host)}"),
                ("POST", f"/_matrix/client/v3/publicRooms?server={quote(host)}"),
                ("GET", f"/_matrix/client/v3/directory/room/{quote(f'#x:{host}', safe='')}"),
                ("POST", f"/_matrix/client/v3/join/{quote(f'#x:{host}', safe='')}"),
                ("POST", f"/_matrix/client/v3/join/{quote(f'!r:{host}', safe='')}?server_name={quote(host)}"),
                ("GET", f"/_matrix/client/v3/profile/{quote(f'@u:{host}', safe='')}"),
            ):
                status, body = await raw(hs, method, path, token=user.access_token,
                                         json={} if method == "POST" else None)
                answers.append((status, body))
                assert status == 502, (method, path, body)
                assert body["errcode"] == "M_UNKNOWN"
                text = body["error"].lower()
                for leak in ("127.0.0.1", "10.0.0.1", "connect", "refused", "denied", "timed out", "ssl"):
                    assert leak not in text, (path, body)
        # per endpoint, nothing tells the closed port, the denied address and the name apart
        endpoints = 6
        for i in range(endpoints):
            assert answers[i] == answers[i + endpoints] == answers[i + 2 * endpoints], i
        assert all(body["error"] == REMOTE_FAILURE for _, body in answers[: endpoints - 1])
