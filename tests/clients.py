"""Helpers for client-server API tests: a real server with a client listener, matrix-nio
clients registered on it, and raw HTTP for the error cases nio hides."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from nio import AsyncClient, AsyncClientConfig, RegisterResponse, RoomSendResponse, SyncResponse

from homeserver.server import RunningServer
from tests.conftest import DatabaseFactory
from tests.servers import make_config, running_server


def base_url(server: RunningServer) -> str:
    return f"http://127.0.0.1:{server.client_port}"


def server_name(server: RunningServer) -> str:
    return server.services.config.server_name


def msg(body: str) -> dict[str, str]:
    """An m.text message's content."""
    return {"msgtype": "m.text", "body": body}


@asynccontextmanager
async def client_server(
    db_factory: DatabaseFactory, directory: Path, ca: tuple[Path, Path], extra: dict[str, Any] | None = None
) -> AsyncIterator[RunningServer]:
    config = make_config(directory, await db_factory.new_settings(), ca, extra=extra)
    async with running_server(config) as server:
        yield server


@asynccontextmanager
async def nio_user(server: RunningServer, localpart: str | None = None) -> AsyncIterator[AsyncClient]:
    """A matrix-nio client registered (dummy flow) and logged in on ``server``."""
    client = AsyncClient(base_url(server), config=AsyncClientConfig(store_sync_tokens=False, encryption_enabled=False))
    try:
        resp = await client.register(localpart or "u" + secrets.token_hex(4), "correct horse battery")
        assert isinstance(resp, RegisterResponse), resp
        yield client
    finally:
        await client.close()


async def sync_until(
    client: AsyncClient, predicate: Callable[[SyncResponse], bool], *, rounds: int = 20, timeout_ms: int = 3000
) -> SyncResponse:
    """Long-poll /sync (from the client's last position) until ``predicate`` holds; bounded."""
    for _ in range(rounds):
        resp = await client.sync(timeout=timeout_ms)
        assert isinstance(resp, SyncResponse), resp
        if predicate(resp):
            return resp
    raise AssertionError("condition not reached by /sync")


def timeline_bodies(resp: SyncResponse, room_id: str) -> list[str]:
    room = resp.rooms.join.get(room_id)
    if room is None:
        return []
    return [getattr(e, "body", "") for e in room.timeline.events if getattr(e, "body", None) is not None]


async def raw(
    server: RunningServer, method: str, path: str, *, token: str | None = None, json: Any = None,
    data: bytes | None = None, headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    hdrs = dict(headers or {})
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    async with aiohttp.ClientSession() as s, s.request(
        method, base_url(server) + path, json=json, data=data, headers=hdrs
    ) as r:
        body = await r.json(content_type=None) if r.content_length != 0 else None
        return r.status, body


async def eventually(check: Callable[[], Awaitable[bool]], *, attempts: int = 200, interval: float = 0.05) -> None:
    """Wait (bounded) for a condition reached by background work, such as federation delivery."""
    for _ in range(attempts):
        if await check():
            return
        await asyncio.sleep(interval)
    raise AssertionError("condition not reached")


async def talk(room_id: str, first: AsyncClient, second: AsyncClient) -> None:
    """Each sends a message to the room ("hi from a" by ``first``, "hi from b" by
    ``second``), and each sees the other's through /sync."""
    for client, body in ((second, "hi from b"), (first, "hi from a")):
        assert isinstance(await client.room_send(room_id, "m.room.message", msg(body)), RoomSendResponse)
    for client, expected in ((first, "hi from b"), (second, "hi from a")):
        got: list[str] = []
        await sync_until(client, lambda r, got=got, expected=expected: bool(
            got.extend(timeline_bodies(r, room_id))) or expected in got)
