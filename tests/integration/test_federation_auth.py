"""Two real servers on loopback (TLS from a test CA, real ed25519 keys, real databases)
authenticate each other's X-Matrix requests and reject tampered, misdirected and unsigned
ones."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from homeserver.crypto.keyring import parse_key_document
from homeserver.crypto.keys import generate_key_line, parse_key_file
from homeserver.crypto.xmatrix import authorization_header
from homeserver.net.client import FederationRequestError
from homeserver.server import RunningServer
from tests.conftest import DatabaseFactory
from tests.servers import make_config, running_server

PROBE = "/_matrix/federation/v1/query/nothing_here?x=1"


@pytest.fixture
async def pair(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> AsyncIterator[tuple[RunningServer, RunningServer]]:
    a_cfg = make_config(tmp_path / "a", await db_factory.new_settings(), test_ca)
    b_cfg = make_config(tmp_path / "b", await db_factory.new_settings(), test_ca)
    async with running_server(a_cfg) as a, running_server(b_cfg) as b:
        yield a, b


def ssl_ctx(ca: tuple[Path, Path]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca[0]))


async def raw_request(
    server: RunningServer, ca: tuple[Path, Path], path: str, headers: dict[str, str],
    method: str = "GET", body: Any = None,
) -> tuple[int, Any]:
    url = f"https://localhost:{server.federation_port}{path}"
    async with aiohttp.ClientSession() as s, s.request(
        method, url, headers=headers, json=body, ssl=ssl_ctx(ca)
    ) as r:
        return r.status, await r.json()


async def test_published_keys_verify(pair: tuple[RunningServer, RunningServer], test_ca: tuple[Path, Path]) -> None:
    a, _ = pair
    status, doc = await raw_request(a, test_ca, "/_matrix/key/v2/server", {})
    assert status == 200
    keys, _ = parse_key_document(doc, a.services.config.server_name, int(time.time() * 1000))
    assert keys[0].key_id == a.services.signing_key.key_id
    assert doc["valid_until_ts"] > time.time() * 1000
    status, version = await raw_request(a, test_ca, "/_matrix/federation/v1/version", {})
    assert status == 200 and version["server"]["name"] == "homeserver"


async def test_signed_request_is_accepted(pair: tuple[RunningServer, RunningServer]) -> None:
    a, b = pair
    b_name = b.services.config.server_name
    # Authenticated: B fetched A's key, verified, and routed (to nothing: 404, not 401).
    with pytest.raises(FederationRequestError) as e:
        await a.services.federation_client.get_json(b_name, PROBE.split("?")[0], query={"x": "1"})
    assert e.value.status == 404 and e.value.errcode == "M_UNRECOGNIZED"
    assert b.services.keyring.fetches == 1
    stored = await b.services.db.fetchval(
        "SELECT verify_key FROM server_keys WHERE server_name = ?", a.services.config.server_name
    )
    assert stored == a.services.signing_key.verify_key_base64


async def test_unsigned_request_rejected(pair: tuple[RunningServer, RunningServer], test_ca: tuple[Path, Path]) -> None:
    _, b = pair
    status, body = await raw_request(b, test_ca, PROBE, {})
    assert status == 401 and body["errcode"] == "M_UNAUTHORIZED"


def _header(server: RunningServer, dest: str, uri: str = PROBE, method: str = "GET", content: Any = None) -> str:
    return authorization_header(
        server.services.signing_key, server.services.config.server_name, dest, method, uri, content
    )


async def test_tampered_signature_rejected(
    pair: tuple[RunningServer, RunningServer], test_ca: tuple[Path, Path]
) -> None:
    a, b = pair
    good = _header(a, b.services.config.server_name)
    sig = good.rsplit('sig="', 1)[1][:-1]
    bad_sig = ("A" if sig[0] != "A" else "B") + sig[1:]
    status, body = await raw_request(b, test_ca, PROBE, {"Authorization": good.replace(sig, bad_sig)})
    assert status == 401 and "signature" in body["error"]
    # the signature covers the URI: the same header on another path fails
    status, _ = await raw_request(b, test_ca, PROBE + "&y=2", {"Authorization": good})
    assert status == 401
    # and the body
    h = _header(a, b.services.config.server_name, method="PUT", content={"a": 1})
    status, _ = await raw_request(b, test_ca, PROBE, {"Authorization": h}, "PUT", {"a": 2})
    assert status == 401
    status, _ = await raw_request(b, test_ca, PROBE, {"Authorization": h}, "PUT", {"a": 1})
    assert status == 405  # authenticated, then routed: /query/{queryType} takes GET only


async def test_replayed_to_another_destination_rejected(
    pair: tuple[RunningServer, RunningServer], test_ca: tuple[Path, Path]
) -> None:
    a, b = pair
    for_a_peer = _header(a, "localhost:1")
    status, body = await raw_request(b, test_ca, PROBE, {"Authorization": for_a_peer})
    assert status == 401 and "destination" in body["error"]


async def test_unknown_key_and_unreachable_origin_rejected(
    pair: tuple[RunningServer, RunningServer], test_ca: tuple[Path, Path]
) -> None:
    a, b = pair
    other = parse_key_file(generate_key_line("zzzz"))
    header = authorization_header(
        other, a.services.config.server_name, b.services.config.server_name, "GET", PROBE
    )
    status, body = await raw_request(b, test_ca, PROBE, {"Authorization": header})
    assert status == 401 and "ed25519:zzzz" in body["error"]
    # an origin nobody can reach: bounded wait, then 401
    header = authorization_header(other, "localhost:1", b.services.config.server_name, "GET", PROBE)
    started = time.monotonic()
    status, body = await raw_request(b, test_ca, PROBE, {"Authorization": header})
    assert status == 401 and body["errcode"] == "M_UNAUTHORIZED"
    assert time.monotonic() - started < 10


async def test_concurrent_key_fetches_coalesce(pair: tuple[RunningServer, RunningServer]) -> None:
    a, b = pair
    b_name = b.services.config.server_name

    async def probe() -> int | None:
        try:
            await a.services.federation_client.get_json(b_name, "/_matrix/federation/v1/query/x")
        except FederationRequestError as e:
            return e.status
        return 200

    statuses = await asyncio.gather(*(probe() for _ in range(20)))
    assert statuses == [404] * 20, statuses
    assert b.services.keyring.fetches == 1


async def test_keys_are_served_from_the_database_cache(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    a_cfg = make_config(tmp_path / "a", await db_factory.new_settings(), test_ca)
    b_cfg = make_config(tmp_path / "b", await db_factory.new_settings(), test_ca)
    b_name = b_cfg.server_name
    async with running_server(a_cfg) as a:
        async with running_server(b_cfg) as b:
            with pytest.raises(FederationRequestError):
                await a.services.federation_client.get_json(b_name, "/_matrix/federation/v1/query/x")
            assert b.services.keyring.fetches == 1
        # B restarts on the same database: A's key comes from the cache, no fetch.
        async with running_server(b_cfg) as b2:
            with pytest.raises(FederationRequestError) as e:
                await a.services.federation_client.get_json(b_name, "/_matrix/federation/v1/query/x")
            assert e.value.status == 404
            assert b2.services.keyring.fetches == 0
