"""A minimal Matrix client over raw aiohttp, the same against Synapse and against ours.

Only the client-server endpoints the interop scenarios use; every call is bounded by a
timeout and a non-2xx answer raises ``ClientError`` carrying the status and Matrix error.
``sync_until`` long-polls from the client's own position and stops at a bounded number of
rounds, so a condition that never comes fails the test instead of hanging it.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import aiohttp

REQUEST_TIMEOUT = 30.0


class ClientError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"{status}: {body}")
        self.status = status
        self.body = body

    @property
    def errcode(self) -> str | None:
        return self.body.get("errcode") if isinstance(self.body, dict) else None


class MatrixClient:
    """One logged-in user on one homeserver's client API."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.user_id = ""
        self.token: str | None = None
        self.next_batch: str | None = None
        self.timelines: dict[str, list[dict[str, Any]]] = {}
        self.invites: dict[str, dict[str, Any]] = {}  # room ID -> its invite section

    async def request(self, method: str, path: str, *, json: Any = None, params: dict[str, str] | None = None,
                      timeout: float = REQUEST_TIMEOUT) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        async with self.session.request(
            method, self.base_url + path, json=json, params=params, headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as r:
            body = await r.json(content_type=None)
            if r.status >= 300:
                raise ClientError(r.status, body)
            return body

    async def register(self, localpart: str | None = None) -> str:
        """Register with the dummy auth stage (after the 401 that opens the UIA session)."""
        body: dict[str, Any] = {"username": localpart or "u" + secrets.token_hex(4), "password": "interop-pass-1"}
        try:
            await self.request("POST", "/_matrix/client/v3/register", json=body)
        except ClientError as e:
            if e.status != 401:
                raise
            body["auth"] = {"type": "m.login.dummy", "session": e.body.get("session")}
        resp = await self.request("POST", "/_matrix/client/v3/register", json=body)
        self.user_id, self.token = resp["user_id"], resp["access_token"]
        # An initial sync fixes the position: later syncs are incremental, so rooms the user
        # is banned from or leaves show in ``rooms.leave`` (an initial sync would omit them).
        await self.sync(timeout_ms=0)
        return self.user_id

    async def create_room(self, version: str, *, preset: str = "public_chat", invite: list[str] | None = None,
                          name: str | None = None) -> str:
        body: dict[str, Any] = {"room_version": version, "preset": preset}
        if invite:
            body["invite"] = invite
        if name:
            body["name"] = name
        return str((await self.request("POST", "/_matrix/client/v3/createRoom", json=body))["room_id"])

    async def join(self, room_id: str, via: list[str]) -> str:
        path = f"/_matrix/client/v3/join/{quote(room_id, safe='')}?" + "&".join(
            f"server_name={quote(s, safe='')}" for s in via
        )
        return str((await self.request("POST", path, json={}, timeout=60))["room_id"])

    async def send_text(self, room_id: str, body: str) -> str:
        txn = secrets.token_hex(8)
        path = f"/_matrix/client/v3/rooms/{quote(room_id, safe='')}/send/m.room.message/{txn}"
        return str((await self.request("PUT", path, json={"msgtype": "m.text", "body": body}))["event_id"])

    async def ban(self, room_id: str, user_id: str, reason: str = "interop") -> None:
        path = f"/_matrix/client/v3/rooms/{quote(room_id, safe='')}/ban"
        await self.request("POST", path, json={"user_id": user_id, "reason": reason})

    async def leave(self, room_id: str) -> None:
        await self.request("POST", f"/_matrix/client/v3/rooms/{quote(room_id, safe='')}/leave", json={})

    async def state_event(self, room_id: str, event_type: str, state_key: str = "") -> Any:
        path = f"/_matrix/client/v3/rooms/{quote(room_id, safe='')}/state/{event_type}/{quote(state_key, safe='')}"
        return await self.request("GET", path)

    async def messages(self, room_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """The room's newest ``limit`` events from /messages, oldest first."""
        path = f"/_matrix/client/v3/rooms/{quote(room_id, safe='')}/messages"
        resp = await self.request("GET", path, params={"dir": "b", "limit": str(limit)})
        return list(reversed(resp["chunk"]))

    async def sync(self, timeout_ms: int = 2000) -> dict[str, Any]:
        """One /sync from the last position; the rooms' timeline events are kept in ``timelines``."""
        params = {"timeout": str(timeout_ms)}
        if self.next_batch is not None:
            params["since"] = self.next_batch
        resp: dict[str, Any] = await self.request("GET", "/_matrix/client/v3/sync", params=params,
                                                  timeout=timeout_ms / 1000 + REQUEST_TIMEOUT)
        self.next_batch = resp["next_batch"]
        self.invites.update(resp.get("rooms", {}).get("invite", {}))
        for section in ("join", "leave"):
            for room_id, room in resp.get("rooms", {}).get(section, {}).items():
                self.timelines.setdefault(room_id, []).extend(room.get("timeline", {}).get("events", []))
        return resp

    async def sync_until(self, predicate: Callable[[], bool], *, within: float = 60.0) -> None:
        """Sync until ``predicate()`` (which reads ``timelines``); fails after ``within`` seconds."""
        deadline = time.monotonic() + within
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.user_id}: condition not reached by /sync within {within}s")
            await self.sync()

    async def wait_for_bodies(self, room_id: str, expected: list[str], *, within: float = 60.0) -> list[str]:
        """Sync until every body in ``expected`` is in the room's timeline; the bodies seen."""
        await self.sync_until(lambda: set(expected) <= set(bodies(self.timelines.get(room_id, []))), within=within)
        return bodies(self.timelines[room_id])

    async def wait_for_membership(self, room_id: str, user_id: str, membership: str, *, within: float = 60.0) -> None:
        await self.sync_until(lambda: membership_of(self.timelines.get(room_id, []), user_id) == membership,
                              within=within)


def bodies(events: list[dict[str, Any]]) -> list[str]:
    return [
        e["content"]["body"] for e in events if e.get("type") == "m.room.message" and "body" in e.get("content", {})
    ]


def membership_of(events: list[dict[str, Any]], user_id: str) -> str | None:
    last = None
    for e in events:
        if e.get("type") == "m.room.member" and e.get("state_key") == user_id:
            last = e.get("content", {}).get("membership")
    return last
