"""What scenarios use to talk to testbed servers: the public client-server API (register,
login, createRoom, join, send, messages, sync, ban) and ``GET /metrics``. Nothing here
reaches into a server's process or database.

Every request has a total timeout; errors become ``ClientError`` naming the request.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

REQUEST_TIMEOUT_SECONDS = 30.0
PASSWORD = "testbed-password"  # test users only
_txn = itertools.count()


class ClientError(Exception):
    def __init__(self, what: str, status: int | None, body: Any) -> None:
        super().__init__(f"{what}: {status} {body}")
        self.status = status
        self.body = body

    @property
    def errcode(self) -> str | None:
        return self.body.get("errcode") if isinstance(self.body, dict) else None


class MatrixUser:
    """One user on one server, with an access token."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, user_id: str, token: str) -> None:
        self.session = session
        self.base_url = base_url
        self.user_id = user_id
        self.token = token

    @classmethod
    async def register(cls, session: aiohttp.ClientSession, base_url: str, localpart: str) -> MatrixUser:
        """Register with the dummy auth flow; log in when the user exists already."""
        body: dict[str, Any] = {"username": localpart, "password": PASSWORD, "auth": {"type": "m.login.dummy"}}
        status, reply = await _request(session, "POST", base_url + "/_matrix/client/v3/register", body)
        if status == 401 and isinstance(reply, dict) and "session" in reply:
            body["auth"]["session"] = reply["session"]
            status, reply = await _request(session, "POST", base_url + "/_matrix/client/v3/register", body)
        if status == 400 and isinstance(reply, dict) and reply.get("errcode") == "M_USER_IN_USE":
            return await cls.login(session, base_url, localpart)
        if status != 200:
            raise ClientError(f"register {localpart} at {base_url}", status, reply)
        return cls(session, base_url, reply["user_id"], reply["access_token"])

    @classmethod
    async def login(cls, session: aiohttp.ClientSession, base_url: str, localpart: str) -> MatrixUser:
        body = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": localpart},
                "password": PASSWORD}
        status, reply = await _request(session, "POST", base_url + "/_matrix/client/v3/login", body)
        if status != 200:
            raise ClientError(f"login {localpart} at {base_url}", status, reply)
        return cls(session, base_url, reply["user_id"], reply["access_token"])

    async def call(self, method: str, path: str, body: Any = None, query: dict[str, str] | None = None) -> Any:
        url = self.base_url + "/_matrix/client/v3" + path
        status, reply = await _request(self.session, method, url, body, self.token, query)
        if status != 200:
            raise ClientError(f"{method} {path} as {self.user_id}", status, reply)
        return reply

    async def create_room(self, name: str) -> str:
        reply = await self.call("POST", "/createRoom", {"preset": "public_chat", "name": name})
        return str(reply["room_id"])

    async def join(self, room_id: str, via: Iterable[str]) -> None:
        path = f"/join/{quote(room_id, safe='')}"
        query = "&".join(f"server_name={quote(s, safe='')}" for s in via)
        await self.call("POST", path + ("?" + query if query else ""), {})

    async def send_text(self, room_id: str, body: str) -> str:
        txn = f"tb{uuid.uuid4().hex[:8]}{next(_txn)}"
        reply = await self.call(
            "PUT", f"/rooms/{quote(room_id, safe='')}/send/m.room.message/{txn}",
            {"msgtype": "m.text", "body": body},
        )
        return str(reply["event_id"])

    async def ban(self, room_id: str, user_id: str, reason: str) -> None:
        await self.call("POST", f"/rooms/{quote(room_id, safe='')}/ban", {"user_id": user_id, "reason": reason})

    async def messages(self, room_id: str, limit: int = 1000, max_pages: int = 50) -> list[dict[str, Any]]:
        """The room's timeline as this user may see it, newest first (bounded pages)."""
        events: list[dict[str, Any]] = []
        query = {"dir": "b", "limit": str(min(limit, 100))}
        for _ in range(max_pages):
            reply = await self.call("GET", f"/rooms/{quote(room_id, safe='')}/messages", query=query)
            chunk = reply.get("chunk") or []
            events.extend(chunk)
            end = reply.get("end")
            if not chunk or not end or len(events) >= limit:
                break
            query = dict(query, **{"from": str(end)})
        return events

    async def sync(self, since: str | None = None, timeout_ms: int = 0) -> dict[str, Any]:
        query = {"timeout": str(timeout_ms)}
        if since:
            query["since"] = since
        reply: dict[str, Any] = await self.call("GET", "/sync", query=query)
        return reply


async def _request(
    session: aiohttp.ClientSession, method: str, url: str, body: Any = None, token: str | None = None,
    query: dict[str, str] | None = None,
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS)
    try:
        async with session.request(
            method, url, json=body, headers=headers, params=query, timeout=timeout
        ) as resp:
            try:
                reply = await resp.json(content_type=None)
            except ValueError:
                reply = await resp.text()
            return resp.status, reply
    except (aiohttp.ClientError, TimeoutError) as e:
        raise ClientError(f"{method} {url}", None, f"{type(e).__name__}: {e}") from None


class MetricsSample(dict[tuple[str, tuple[tuple[str, str], ...]], float]):
    """One scrape: (sample name, sorted labels) -> value."""

    def total(self, name: str, **labels: str) -> float:
        """Sum of the samples called ``name`` whose labels include ``labels``."""
        want = set(labels.items())
        return sum(v for (n, lbls), v in self.items() if n == name and want <= set(lbls))

    def by_label(self, name: str, label: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for (n, lbls), v in self.items():
            if n == name:
                key = dict(lbls).get(label, "")
                out[key] = out.get(key, 0.0) + v
        return out


async def scrape(session: aiohttp.ClientSession, metrics_url: str) -> MetricsSample:
    url = metrics_url.rstrip("/") + "/metrics"
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS)) as resp:
            text = await resp.text()
            if resp.status != 200:
                raise ClientError(f"GET {url}", resp.status, text[:200])
    except (aiohttp.ClientError, TimeoutError) as e:
        raise ClientError(f"GET {url}", None, f"{type(e).__name__}: {e}") from None
    sample = MetricsSample()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            sample[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return sample
