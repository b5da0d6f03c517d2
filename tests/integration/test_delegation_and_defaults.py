"""Configured answers (both engines): ``/.well-known/matrix/server`` serves the configured
delegation on the client and the federation listener, and 404 without one; rooms created
without a room version get ``rooms.default_room_version``, which the capabilities report."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import aiohttp

from homeserver.server import RunningServer
from tests.clients import base_url, client_server, nio_user, raw
from tests.conftest import DatabaseFactory

V3 = "/_matrix/client/v3"
WELL_KNOWN = "/.well-known/matrix/server"


async def federation_get(server: RunningServer, path: str, ca: tuple[Path, Path]) -> tuple[int, Any]:
    ctx = ssl.create_default_context(cafile=str(ca[0]))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s, \
            s.get(f"https://localhost:{server.federation_port}{path}") as r:
        return r.status, await r.json(content_type=None)


async def test_well_known_server_when_delegated(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    extra = {"well_known": {"server": "matrix.example.org:443"}}
    async with client_server(db_factory, tmp_path / "a", test_ca, extra=extra) as server:
        assert await raw(server, "GET", WELL_KNOWN) == (200, {"m.server": "matrix.example.org:443"})
        assert await federation_get(server, WELL_KNOWN, test_ca) == (200, {"m.server": "matrix.example.org:443"})
        # The client discovery document is unchanged beside it.
        status, body = await raw(server, "GET", "/.well-known/matrix/client")
        assert status == 200 and body["m.homeserver"]["base_url"] == base_url(server)
        status, _ = await raw(server, "POST", WELL_KNOWN, json={})
        assert status == 405


async def test_no_delegation_is_404(db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]) -> None:
    async with client_server(db_factory, tmp_path / "a", test_ca) as server:
        status, body = await raw(server, "GET", WELL_KNOWN)
        assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
        status, body = await federation_get(server, WELL_KNOWN, test_ca)
        assert (status, body["errcode"]) == (404, "M_NOT_FOUND")


async def room_version_of(server: RunningServer, token: str, room_id: str) -> str:
    status, body = await raw(server, "GET", f"{V3}/rooms/{room_id}/state/m.room.create", token=token)
    assert status == 200, body
    return str(body.get("room_version", "1"))


async def test_configured_default_room_version(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    extra = {"rooms": {"default_room_version": "10"}}
    async with client_server(db_factory, tmp_path / "a", test_ca, extra=extra) as server, nio_user(server) as alice:
        token = alice.access_token
        status, body = await raw(server, "GET", f"{V3}/capabilities", token=token)
        assert status == 200
        assert body["capabilities"]["m.room_versions"]["default"] == "10"
        assert set(body["capabilities"]["m.room_versions"]["available"]) == {str(v) for v in range(1, 13)}
        assert set(body["capabilities"]["m.room_versions"]["available"].values()) == {"stable"}
        status, body = await raw(server, "POST", f"{V3}/createRoom", token=token, json={})
        assert status == 200
        assert await room_version_of(server, token, body["room_id"]) == "10"
        # Asked for explicitly, another version is still created.
        status, body = await raw(server, "POST", f"{V3}/createRoom", token=token, json={"room_version": "12"})
        assert status == 200
        assert await room_version_of(server, token, body["room_id"]) == "12"
        status, body = await raw(server, "POST", f"{V3}/createRoom", token=token, json={"room_version": "13"})
        assert (status, body["errcode"]) == (400, "M_UNSUPPORTED_ROOM_VERSION")


async def test_default_room_version_unset_is_12(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    async with client_server(db_factory, tmp_path / "a", test_ca) as server, nio_user(server) as alice:
        status, body = await raw(server, "POST", f"{V3}/createRoom", token=alice.access_token, json={})
        assert status == 200
        assert await room_version_of(server, alice.access_token, body["room_id"]) == "12"
