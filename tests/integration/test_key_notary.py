"""The notary endpoints (both engines): ``POST /_matrix/key/v2/query`` and
``GET /_matrix/key/v2/query/{serverName}`` on our server N serve another server B's keys
with B's signature kept and N's added, fetched from B when N holds none or none valid as
long as asked, from N's cache otherwise; a server nobody can reach is left out (an empty
list, not an error); bad queries get 400; another of our servers whose direct fetch fails
learns B's keys through N."""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from signedjson.key import get_verify_key
from signedjson.sign import verify_signed_json

from homeserver.crypto.keyring import parse_key_document
from homeserver.crypto.keys import ServerSigningKey, load_key_file, server_key_document
from homeserver.crypto.notary import MAX_SERVERS_PER_QUERY
from homeserver.server import RunningServer
from homeserver.storage.keys import KeyStore
from tests.conftest import DatabaseFactory
from tests.servers import free_port, make_config, running_server

HOUR_MS = 3_600_000


def now_ms() -> int:
    return int(time.time() * 1000)


def key_of(server: RunningServer) -> ServerSigningKey:
    return load_key_file(server.services.config.signing_key_path)


def name_of(server: RunningServer) -> str:
    return server.services.config.server_name


def served(server: RunningServer, result: str) -> float:
    value = server.services.metrics.registry.get_sample_value("hs_key_notary_servers_total", {"result": result})
    return value or 0.0


def verify(doc: dict[str, Any], *signers: tuple[str, ServerSigningKey]) -> None:
    for name, key in signers:
        verify_signed_json(doc, name, get_verify_key(key.signing_key))


@pytest.fixture
async def servers(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> AsyncIterator[tuple[RunningServer, RunningServer]]:
    """N (the notary) and B (whose keys are asked for)."""
    n_cfg = make_config(tmp_path / "n", await db_factory.new_settings(), test_ca)
    b_cfg = make_config(tmp_path / "b", await db_factory.new_settings(), test_ca)
    async with running_server(n_cfg) as n, running_server(b_cfg) as b:
        yield n, b


@pytest.fixture
async def http(test_ca: tuple[Path, Path]) -> AsyncIterator[aiohttp.ClientSession]:
    ctx = ssl.create_default_context(cafile=str(test_ca[0]))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
        yield session


async def post_query(http: aiohttp.ClientSession, n: RunningServer, body: Any) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with http.post(f"https://{name_of(n)}/_matrix/key/v2/query", data=data) as r:
        return r.status, await r.json(content_type=None)


async def get_query(http: aiohttp.ClientSession, n: RunningServer, server: str, **params: str) -> tuple[int, Any]:
    async with http.get(f"https://{name_of(n)}/_matrix/key/v2/query/{server}", params=params) as r:
        return r.status, await r.json(content_type=None)


async def test_notary_fetches_signs_and_serves_from_its_cache(
    servers: tuple[RunningServer, RunningServer], http: aiohttp.ClientSession
) -> None:
    n, b = servers
    fetches = n.services.keyring.fetches
    status, body = await post_query(http, n, {"server_keys": {name_of(b): {}}})
    assert status == 200
    [doc] = body["server_keys"]
    assert doc["server_name"] == name_of(b) and key_of(b).key_id in doc["verify_keys"]
    # B's own signature kept, N's added: both verify over the same document.
    verify(doc, (name_of(b), key_of(b)), (name_of(n), key_of(n)))
    assert set(doc["signatures"]) == {name_of(b), name_of(n)}
    assert n.services.keyring.fetches == fetches + 1 and served(n, "fetched") == 1
    # Asked again, by key ID and by GET: from the cache, no second fetch.
    status, body = await post_query(http, n, {"server_keys": {name_of(b): {key_of(b).key_id: {}}}})
    assert status == 200 and [d["valid_until_ts"] for d in body["server_keys"]] == [doc["valid_until_ts"]]
    status, body = await get_query(http, n, name_of(b))
    assert status == 200 and len(body["server_keys"]) == 1
    verify(body["server_keys"][0], (name_of(b), key_of(b)), (name_of(n), key_of(n)))
    assert n.services.keyring.fetches == fetches + 1 and served(n, "cached") == 2
    # N's own keys, and no server at all.
    status, body = await get_query(http, n, name_of(n))
    assert status == 200
    [own] = body["server_keys"]
    assert own["server_name"] == name_of(n)
    verify(own, (name_of(n), key_of(n)))
    assert await post_query(http, n, {"server_keys": {}}) == (200, {"server_keys": []})


async def test_minimum_valid_until_ts_beyond_the_cached_validity_refetches(
    servers: tuple[RunningServer, RunningServer], http: aiohttp.ClientSession
) -> None:
    n, b = servers
    # N holds a document of B (signed by B) valid for one more minute only.
    old = server_key_document(name_of(b), key_of(b), now_ms() + 60_000)
    keys, _ = parse_key_document(old, name_of(b), now_ms())
    await KeyStore(n.services.db).store_document(name_of(b), old, keys, now_ms())
    fetches = n.services.keyring.fetches
    # Valid long enough: the cached document, no fetch.
    criteria = {key_of(b).key_id: {"minimum_valid_until_ts": now_ms() + 30_000}}
    status, body = await post_query(http, n, {"server_keys": {name_of(b): criteria}})
    assert status == 200 and [d["valid_until_ts"] for d in body["server_keys"]] == [old["valid_until_ts"]]
    assert n.services.keyring.fetches == fetches
    # Wanted valid in two hours: N fetches B's current document (valid a day).
    status, body = await get_query(http, n, name_of(b), minimum_valid_until_ts=str(now_ms() + 2 * HOUR_MS))
    assert status == 200
    [doc] = body["server_keys"]
    assert doc["valid_until_ts"] > now_ms() + 2 * HOUR_MS
    verify(doc, (name_of(b), key_of(b)), (name_of(n), key_of(n)))
    assert n.services.keyring.fetches == fetches + 1 and served(n, "fetched") == 1
    # A key ID B never published, asked again and again: within the refetch interval of
    # the last fetch B is not asked again, and what N holds is served.
    for _ in range(3):
        status, body = await post_query(http, n, {"server_keys": {name_of(b): {"ed25519:nope": {}}}})
        assert status == 200 and [d["valid_until_ts"] for d in body["server_keys"]] == [doc["valid_until_ts"]]
    assert n.services.keyring.fetches == fetches + 1 and served(n, "stale") == 3


async def test_unreachable_or_unknown_servers_are_left_out(
    servers: tuple[RunningServer, RunningServer], http: aiohttp.ClientSession
) -> None:
    n, b = servers
    dark = f"localhost:{free_port()}"  # nothing listens there
    status, body = await post_query(http, n, {"server_keys": {dark: {}, name_of(b): {}}})
    assert status == 200 and [d["server_name"] for d in body["server_keys"]] == [name_of(b)]
    assert await get_query(http, n, dark) == (200, {"server_keys": []})
    assert served(n, "none") == 2


async def test_bad_queries_are_400(servers: tuple[RunningServer, RunningServer], http: aiohttp.ClientSession) -> None:
    n, b = servers
    bad_json: list[Any] = [
        [],
        {},
        {"server_keys": []},
        {"server_keys": {name_of(b): []}},
        {"server_keys": {name_of(b): {"ed25519:a": 5}}},
        {"server_keys": {name_of(b): {"ed25519:a": {"minimum_valid_until_ts": "soon"}}}},
        {"server_keys": {name_of(b): {"ed25519:a": {"minimum_valid_until_ts": -1}}}},
        {"server_keys": {name_of(b): {"ed25519:a": {"minimum_valid_until_ts": 1.5}}}},
        {"server_keys": {"not a server!": {}}},
    ]
    for body in bad_json:
        status, reply = await post_query(http, n, body)
        assert (status, reply["errcode"]) == (400, "M_BAD_JSON"), body
    status, reply = await post_query(http, n, b"{not json")
    assert (status, reply["errcode"]) == (400, "M_NOT_JSON")
    many = {"server_keys": {f"s{i}.example": {} for i in range(MAX_SERVERS_PER_QUERY + 1)}}
    status, reply = await post_query(http, n, many)
    assert (status, reply["errcode"]) == (400, "M_INVALID_PARAM")
    status, reply = await post_query(http, n, b'{"server_keys": {"' + b"x" * 70_000 + b'": {}}}')
    assert (status, reply["errcode"]) == (413, "M_TOO_LARGE")
    for server, params in ((name_of(b), {"minimum_valid_until_ts": "soon"}),
                           (name_of(b), {"minimum_valid_until_ts": "-5"}),
                           ("bad_name!", {})):
        status, reply = await get_query(http, n, server, **params)
        assert (status, reply["errcode"]) == (400, "M_INVALID_PARAM"), (server, params)
    assert n.services.keyring.fetches == 0  # nothing bad was fetched


async def test_our_server_learns_keys_through_the_notary_when_direct_fails(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path],
    servers: tuple[RunningServer, RunningServer],
) -> None:
    n, b = servers
    notary = {"server_name": name_of(n), "verify_keys": {key_of(n).key_id: key_of(n).verify_key_base64}}
    # A cannot reach B itself (B's name leads to a closed port), only through N.
    a_cfg = make_config(tmp_path / "a", await db_factory.new_settings(), test_ca, extra={"federation": {
        "hosts": {name_of(b): f"https://127.0.0.1:{free_port()}"}, "key_servers": [notary]}})
    async with running_server(a_cfg) as a:
        vk = await a.services.keyring.get_verify_key(name_of(b), key_of(b).key_id)
        assert vk.encode() == get_verify_key(key_of(b).signing_key).encode()
        assert served(n, "fetched") == 1
        # A keeps the document as N vouched for it: B's and N's signatures.
        doc = await a.services.keyring.cached_document(name_of(b))
        assert doc is not None
        verify(doc, (name_of(b), key_of(b)), (name_of(n), key_of(n)))
