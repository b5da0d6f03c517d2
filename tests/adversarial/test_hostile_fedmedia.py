"""Hostile requests to the federation media endpoints (helper hostile1), on both engines:
no signature, a signature naming another destination, odd media IDs and thumbnail sizes
(non-ASCII digits and thousands of digits used to answer 500 on the client side and are
checked the same way here). Every refusal is a Matrix error."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from homeserver.crypto.xmatrix import authorization_header
from homeserver.server import RunningServer
from tests.clients import client_server, nio_user
from tests.conftest import DatabaseFactory
from tests.remote import FakeRemote, fake_remote

F = "/_matrix/federation/v1/media"


@pytest.fixture
async def setup(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> AsyncIterator[tuple[RunningServer, FakeRemote]]:
    async with client_server(db_factory, tmp_path / "a", test_ca) as server, \
            fake_remote(test_ca, tmp_path / "evil") as evil:
        yield server, evil


async def signed(server: RunningServer, remote: FakeRemote, path: str, destination: str | None = None,
                 sign: bool = True) -> tuple[int, Any, str]:
    dest = destination or server.services.config.server_name
    headers = {"Authorization": authorization_header(remote.key, remote.server_name, dest, "GET", path, None)} \
        if sign else {}
    ssl_ctx = remote._session.connector._ssl  # type: ignore[union-attr]
    async with aiohttp.ClientSession() as s, s.get(
        URL(f"https://localhost:{server.federation_port}{path}", encoded=True), headers=headers, ssl=ssl_ctx,
    ) as resp:
        data = await resp.read()
        return resp.status, data, resp.headers.get("Content-Type", "")


async def test_federation_media_refusals_are_matrix_errors(setup: tuple[RunningServer, FakeRemote]) -> None:
    server, evil = setup
    async with nio_user(server) as alice:
        async with aiohttp.ClientSession() as s, s.post(
            f"http://127.0.0.1:{server.client_port}/_matrix/media/v3/upload", data=b"hello",
            headers={"Authorization": f"Bearer {alice.access_token}", "Content-Type": "text/plain"},
        ) as r:
            media_id = (await r.json())["content_uri"].rsplit("/", 1)[1]
    status, data, ctype = await signed(server, evil, f"{F}/download/{media_id}")
    assert status == 200 and ctype.startswith("multipart/mixed") and b"hello" in data
    cases = [
        (f"{F}/download/{media_id}", {"sign": False}, 401),
        (f"{F}/download/{media_id}", {"destination": "other.example"}, 401),
        (f"{F}/download/{'a' * 300}", {}, 404),
        (f"{F}/download/a%2Fb", {}, 404),
        (f"{F}/download/nope", {}, 404),
    ]
    for value in ("²", "١٢", "1" * 5000, "0", "-1", "1.5"):
        cases.append((f"{F}/thumbnail/{media_id}?width={value}&height=32&method=scale", {}, 400))
    cases.append((f"{F}/thumbnail/{media_id}?width=32&height=32&method=foo", {}, 400))
    for path, kw, want in cases:
        status, data, _ = await signed(server, evil, path, **kw)
        body = json.loads(data)
        assert status == want and "errcode" in body, (path[:80], kw, status, body)
