"""Real peers for the outbound sender's tests and benches, on loopback.

``Receiver`` is a small HTTPS federation server: it serves its own signed key document,
verifies every ``PUT /send`` X-Matrix header with the origin's published key (fetched over
HTTPS, checked with the project's verifier), records transactions, answers a repeated
txnId as the spec asks (same reply, no second effect), answers ``GET /event`` for the PDUs
it received (optionally only after some polls), and can be told to fail (500),
hang (accept and never answer) or go down (stop listening) and come back on the same port.

``Blackhole`` accepts TCP connections and never sends a byte; it counts the sockets held.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from nacl.signing import VerifyKey

from homeserver.crypto.keyring import parse_key_document
from homeserver.crypto.keys import ServerSigningKey, generate_key_line, parse_key_file, server_key_document
from homeserver.crypto.tls import issue_certificate
from homeserver.crypto.xmatrix import XMatrixError, authorization_header, parse_authorization, verify_request
from homeserver.events.canonical import decode_b64
from homeserver.events.hashes import compute_event_id
from homeserver.events.versions import get_room_version


async def eventually(predicate: Callable[[], Awaitable[bool] | bool], timeout: float = 30.0) -> None:
    """Poll ``predicate`` until it holds; TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    for _ in itertools.count():
        result = predicate()
        if await result if inspect.isawaitable(result) else result:
            return
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.005)


@dataclass
class ReceivedTxn:
    origin: str
    txn_id: str
    pdus: list[dict[str, Any]]
    edus: list[dict[str, Any]]
    received_at: float


@dataclass
class Receiver:
    directory: Path
    ca: tuple[Path, Path]
    port: int = 0  # 0: a free port picked by the kernel at the first start, kept afterwards
    mode: str = "ok"  # ok | fail | hang
    transactions: list[ReceivedTxn] = field(default_factory=list)
    repeats: int = 0
    rejected_auth: int = 0
    attempts: int = 0
    room_version: str = "10"
    attempt_txn_ids: list[str] = field(default_factory=list)
    event_requests: int = 0  # GET /event (the sender's pacing of a backlog)
    # GET /event answers 404 to this many requests for an event before it shows it (as a
    # receiver that acknowledges /send before it has processed the PDUs).
    event_hidden_polls: int = 0
    # ("send", txn_id, number of PDUs) and ("event", event_id, status), in arrival order.
    requests_log: list[tuple[str, str, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.server_name = f"localhost:{self.port}"  # set again by start()
        self.key: ServerSigningKey = parse_key_file(generate_key_line())
        self.cert, self.tls_key = self.directory / "tls.crt", self.directory / "tls.key"
        issue_certificate(self.cert, self.tls_key, ["localhost", "127.0.0.1"], self.ca[0], self.ca[1])
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._keys: dict[tuple[str, str], VerifyKey] = {}
        self._replies: dict[tuple[str, str], dict[str, Any]] = {}
        self._release = asyncio.Event()
        self.changed = asyncio.Condition()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=ssl.create_default_context(cafile=str(self.ca[0])))
            )
        self._release = asyncio.Event()
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.add_routes([
            web.get("/_matrix/key/v2/server", self._keys_handler),
            web.put("/_matrix/federation/v1/send/{txn_id}", self._send_handler),
            web.get("/_matrix/federation/v1/event/{event_id}", self._event_handler),
        ])
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert, self.tls_key)
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=ctx, reuse_address=True)
        await site.start()
        if self.port == 0:
            server = site._server
            sockets = getattr(server, "sockets", None) or []
            self.port = int(sockets[0].getsockname()[1])
            self.server_name = f"localhost:{self.port}"

    async def go_down(self) -> None:
        """Stop listening (connections refused) until ``start`` again."""
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def close(self) -> None:
        await self.go_down()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def signed_get(self, destination: str, path: str) -> int:
        """An X-Matrix signed GET to another server (as a peer that is back would send)."""
        assert self._session is not None
        header = authorization_header(self.key, self.server_name, destination, "GET", path)
        async with self._session.get(
            f"https://{destination}{path}", headers={"Authorization": header},
            timeout=aiohttp.ClientTimeout(total=10),
        ) as resp:
            return resp.status

    # ------------------------------------------------------------------ queries

    def pdu_counts(self) -> Counter[str]:
        return Counter(self._event_id(p) for t in self.transactions for p in t.pdus)

    def _event_id(self, pdu: dict[str, Any]) -> str:
        return compute_event_id(pdu, get_room_version(self.room_version))

    def pdu_ids(self) -> list[str]:
        return [self._event_id(p) for t in self.transactions for p in t.pdus]

    async def wait_for(self, predicate: Any, timeout: float = 30.0) -> None:
        """Wait (bounded) until ``predicate(self)`` is true."""
        async with asyncio.timeout(timeout):
            async with self.changed:
                await self.changed.wait_for(lambda: predicate(self))

    # ------------------------------------------------------------------ handlers

    async def _keys_handler(self, request: web.Request) -> web.Response:
        doc = server_key_document(self.server_name, self.key, int(time.time() * 1000) + 3_600_000)
        return web.json_response(doc)

    async def _verify_key(self, origin: str, key_id: str) -> VerifyKey:
        cached = self._keys.get((origin, key_id))
        if cached is not None:
            return cached
        assert self._session is not None
        async with self._session.get(
            f"https://{origin}/_matrix/key/v2/server", timeout=aiohttp.ClientTimeout(total=10)
        ) as resp:
            doc = await resp.json()
        keys, _ = parse_key_document(doc, origin, int(time.time() * 1000))
        for k in keys:
            self._keys[(origin, k.key_id)] = VerifyKey(decode_b64(k.verify_key))
        return self._keys[(origin, key_id)]

    async def _send_handler(self, request: web.Request) -> web.Response:
        self.attempts += 1
        raw = await request.read()
        body = json.loads(raw)
        try:
            auth = parse_authorization(request.headers.get("Authorization", ""))
            if auth.destination != self.server_name:
                raise XMatrixError("wrong destination")
            key = await self._verify_key(auth.origin, auth.key_id)
            verify_request(auth, key, request.method, request.raw_path, self.server_name, body)
        except (XMatrixError, KeyError, ValueError, aiohttp.ClientError):
            self.rejected_auth += 1
            return web.json_response({"errcode": "M_UNAUTHORIZED", "error": "bad signature"}, status=401)
        self.attempt_txn_ids.append(request.match_info["txn_id"])
        if self.mode == "hang":
            await self._release.wait()
            raise web.HTTPServiceUnavailable()
        if self.mode == "fail":
            return web.json_response({"errcode": "M_UNKNOWN", "error": "told to fail"}, status=500)
        txn_key = (auth.origin, request.match_info["txn_id"])
        if txn_key in self._replies:
            self.repeats += 1
            return web.json_response(self._replies[txn_key])
        assert body["origin"] == auth.origin
        assert len(body.get("pdus", [])) <= 50 and len(body.get("edus", [])) <= 100
        txn = ReceivedTxn(auth.origin, txn_key[1], body.get("pdus", []), body.get("edus", []), time.monotonic())
        reply: dict[str, Any] = {"pdus": {self._event_id(p): {} for p in txn.pdus}}
        self._replies[txn_key] = reply
        self.requests_log.append(("send", txn.txn_id, len(txn.pdus)))
        async with self.changed:
            self.transactions.append(txn)
            self.changed.notify_all()
        return web.json_response(reply)


    async def _event_handler(self, request: web.Request) -> web.Response:
        """GET /event: a PDU received (unauthenticated here), else 404 (the sender's pacing
        of a backlog asks whether the last event of a transaction arrived)."""
        self.event_requests += 1
        wanted = request.match_info["event_id"]
        asked = sum(1 for kind, event_id, _ in self.requests_log if kind == "event" and event_id == wanted)
        for t in self.transactions:
            for p in t.pdus:
                if self._event_id(p) == wanted and asked >= self.event_hidden_polls:
                    self.requests_log.append(("event", wanted, 200))
                    return web.json_response({"origin": self.server_name, "origin_server_ts": 0, "pdus": [p]})
        self.requests_log.append(("event", wanted, 404))
        return web.json_response({"errcode": "M_NOT_FOUND", "error": "not here"}, status=404)


class Blackhole:
    """Accepts TCP connections and never answers; counts the sockets it holds."""

    def __init__(self) -> None:
        self.port = 0
        self.server_name = ""
        self.open = 0
        self.peak = 0
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        self.server_name = f"localhost:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open += 1
        self.peak = max(self.peak, self.open)
        self._writers.add(writer)
        try:
            while await reader.read(65536):
                pass  # swallow whatever comes (TLS hello, request), answer nothing
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.open -= 1
            self._writers.discard(writer)
            writer.close()

    async def close(self) -> None:
        for w in list(self._writers):
            w.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
