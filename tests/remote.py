"""A fake remote homeserver for integration tests: its own ed25519 key served at its own
``/_matrix/key/v2/server`` over real HTTPS on loopback (certificate from the test CA), a
room it builds and signs with the event core, signed ``/send`` transactions to our server,
and answers to ``get_missing_events``, ``state_ids``, ``event`` and ``event_auth``.

How our server learns the room: the test persists the room's first events (create, the
remote's join, power levels, public join rules) through our server's EventPersister
directly, since joining over federation is not part of inbound ``/send``.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web
from yarl import URL

from homeserver.crypto.keys import ServerSigningKey, generate_key_line, parse_key_file, server_key_document
from homeserver.crypto.tls import issue_certificate
from homeserver.crypto.xmatrix import authorization_header
from homeserver.events.auth import auth_types_for_event
from homeserver.events.event import Event, StateKey
from homeserver.events.hashes import event_reference
from homeserver.events.signing import sign_event
from homeserver.events.versions import KNOWN_ROOM_VERSIONS, RoomVersion
from homeserver.server import RunningServer
from homeserver.storage.events import Outcome
from tests.servers import free_port


class RemoteRoom:
    """A linear room built by the fake remote: each event's prev is the last event."""

    def __init__(self, remote: FakeRemote, version: RoomVersion, localpart: str = "creator") -> None:
        self.remote = remote
        self.version = version
        self.room_id = f"!{localpart}{free_port()}:{remote.server_name}"
        self.creator = f"@{localpart}:{remote.server_name}"
        self.events: list[Event] = []
        self.state: dict[StateKey, Event] = {}
        self.state_before: dict[str, dict[StateKey, str]] = {}
        self.depth = 0

    def build(
        self, type: str, sender: str, content: dict[str, Any], state_key: str | None = None,
        *, prev: list[str] | None = None, signer: FakeRemote | None = None, add: bool = True,
        auth_from: dict[StateKey, Event] | None = None, extra: dict[str, Any] | None = None,
    ) -> Event:
        """Build and sign an event on top of the room (or on ``prev``); ``extra``: more
        top-level keys (a room v10 redaction's ``redacts``)."""
        prev_events = prev if prev is not None else ([self.events[-1].event_id] if self.events else [])
        draft: dict[str, Any] = {"type": type, "sender": sender, "content": content, "room_id": self.room_id}
        draft.update(extra or {})
        if state_key is not None:
            draft["state_key"] = state_key
        state = auth_from if auth_from is not None else self.state
        wanted = auth_types_for_event(draft, self.version)
        self.depth += 1
        pdu = dict(
            draft,
            prev_events=prev_events,
            auth_events=sorted(state[k].event_id for k in wanted if k in state),
            depth=self.depth,
            origin_server_ts=int(time.time() * 1000),
            hashes={},
            signatures={},
        )
        who = signer or self.remote
        if self.version.origin_event_ids:  # rooms 1, 2: the origin's ID, [id, hash] references
            pdu["event_id"] = f"$e{free_port()}x{self.depth}:{who.server_name}"
            pdu["prev_events"] = [event_reference(self.remote.events[e].pdu, self.version) for e in prev_events]
            pdu["auth_events"] = [event_reference(self.remote.events[e].pdu, self.version)
                                  for e in pdu["auth_events"]]
        signed = sign_event(pdu, self.version, who.server_name, who.key.signing_key)
        event = Event.from_pdu(signed, self.version)
        if add:
            self.add(event)
        return event

    def add(self, event: Event) -> None:
        self.state_before[event.event_id] = {k: e.event_id for k, e in self.state.items()}
        self.events.append(event)
        self.remote.events[event.event_id] = event
        if event.is_state:
            self.state[event.state_tuple] = event

    def create_room(self) -> list[Event]:
        content: dict[str, Any] = {"room_version": self.version.identifier}
        if not self.version.create_uses_sender_as_creator:
            content["creator"] = self.creator
        first = [
            self.build("m.room.create", self.creator, content, ""),
            self.build("m.room.member", self.creator, {"membership": "join"}, self.creator),
            self.build("m.room.power_levels", self.creator, {"users": {self.creator: 100}}, ""),
            self.build("m.room.join_rules", self.creator, {"join_rule": "public"}, ""),
        ]
        return first

    def message(self, body: str, sender: str | None = None, **kw: Any) -> Event:
        return self.build("m.room.message", sender or self.creator, {"msgtype": "m.text", "body": body}, **kw)

    async def teach(self, server: RunningServer, events: list[Event] | None = None) -> None:
        """Persist events (default: all so far) on ``server`` directly, as accepted."""
        persister = server.services.persister
        for event in events if events is not None else self.events:
            await persister.persist_event(event, Outcome.ACCEPTED, self.state_before[event.event_id])


class FakeRemote:
    def __init__(self, ca: tuple[Path, Path], directory: Path, host: str = "localhost") -> None:
        self.ca = ca
        self.dir = directory
        self.port = free_port()
        # host: "localhost" or "127.0.0.1" (both in its certificate), so that two fake
        # servers can differ in more than their port (server ACLs ignore ports).
        self.server_name = f"{host}:{self.port}"
        self.key: ServerSigningKey = parse_key_file(generate_key_line())
        self.events: dict[str, Event] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) received
        self.hang = False  # never answer federation requests (a dead peer)
        self.serve_missing_events = True  # False: get_missing_events finds nothing
        self._hung = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.txn_counter = 0
        self.rooms: dict[str, RemoteRoom] = {}
        # PUT /send from our server: answered 200 and recorded when accept_sends is set
        # (else 404, as a server without the endpoint would).
        self.accept_sends = False
        self.received_transactions: list[dict[str, Any]] = []

    def room(self, version: str = "11", localpart: str = "creator") -> RemoteRoom:
        room = RemoteRoom(self, KNOWN_ROOM_VERSIONS[version], localpart)
        self.rooms[room.room_id] = room
        return room

    # ------------------------------------------------------------------ serving

    async def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        cert, key = self.dir / "tls.crt", self.dir / "tls.key"
        issue_certificate(cert, key, ["localhost", "127.0.0.1"], self.ca[0], self.ca[1])
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        app = web.Application()
        p = "/_matrix/federation/v1"
        app.add_routes([
            web.get("/_matrix/key/v2/server", self._keys),
            web.post(p + "/get_missing_events/{roomId}", self._get_missing_events),
            web.get(p + "/state_ids/{roomId}", self._state_ids),
            web.get(p + "/event/{eventId}", self._event),
            web.get(p + "/event_auth/{roomId}/{eventId}", self._event_auth),
            web.put(p + "/send/{txnId}", self._send),
        ])
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=ctx).start()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ssl.create_default_context(cafile=str(self.ca[0])))
        )

    async def stop(self) -> None:
        self._hung.set()
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _keys(self, request: web.Request) -> web.Response:
        doc = server_key_document(self.server_name, self.key, int(time.time() * 1000) + 3600_000)
        return web.json_response(doc)

    async def _federation(self, request: web.Request) -> None:
        self.requests.append((request.method, request.path))
        if self.hang:
            # A peer that never answers; released when the fake remote stops.
            await self._hung.wait()

    async def _get_missing_events(self, request: web.Request) -> web.Response:
        await self._federation(request)
        body = await request.json()
        if not self.serve_missing_events:
            return web.json_response({"events": []})
        limit, min_depth = body.get("limit", 10), body.get("min_depth", 0)
        earliest = set(body.get("earliest_events", []))
        found: list[Event] = []
        seen = set(earliest)
        frontier = [p for e in body["latest_events"] if e in self.events for p in self.events[e].prev_events]
        while frontier and len(found) < limit:
            nxt = []
            for event_id in frontier:
                if event_id in seen or event_id not in self.events:
                    continue
                seen.add(event_id)
                event = self.events[event_id]
                if event.depth < min_depth:
                    continue
                found.append(event)
                nxt.extend(event.prev_events)
            frontier = nxt
        found = found[:limit]
        return web.json_response({"events": [e.pdu for e in sorted(found, key=lambda e: e.depth)]})

    async def _send(self, request: web.Request) -> web.Response:
        await self._federation(request)
        if not self.accept_sends:
            return web.json_response({"errcode": "M_UNRECOGNIZED", "error": "no"}, status=404)
        body = await request.json()
        self.received_transactions.append(body)
        return web.json_response({"pdus": {}})

    def _room_of(self, room_id: str) -> RemoteRoom | None:
        return self.rooms.get(room_id)

    def _auth_chain(self, event_ids: list[str]) -> set[str]:
        seen: set[str] = set()
        frontier = list(event_ids)
        while frontier:
            e = frontier.pop()
            for a in self.events[e].auth_events:
                if a not in seen:
                    seen.add(a)
                    frontier.append(a)
        return seen

    async def _state_ids(self, request: web.Request) -> web.Response:
        await self._federation(request)
        room = self._room_of(request.match_info["roomId"])
        event_id = request.query.get("event_id", "")
        if room is None or event_id not in room.state_before:
            return web.json_response({"errcode": "M_NOT_FOUND", "error": "no"}, status=404)
        state = room.state_before[event_id]
        return web.json_response({
            "pdu_ids": sorted(state.values()),
            "auth_chain_ids": sorted(self._auth_chain(list(state.values()))),
        })

    async def _event(self, request: web.Request) -> web.Response:
        await self._federation(request)
        event = self.events.get(request.match_info["eventId"])
        if event is None:
            return web.json_response({"errcode": "M_NOT_FOUND", "error": "no"}, status=404)
        return web.json_response({"origin": self.server_name, "origin_server_ts": 0, "pdus": [event.pdu]})

    async def _event_auth(self, request: web.Request) -> web.Response:
        await self._federation(request)
        event_id = request.match_info["eventId"]
        if event_id not in self.events:
            return web.json_response({"errcode": "M_NOT_FOUND", "error": "no"}, status=404)
        chain = self._auth_chain([event_id])
        return web.json_response({"auth_chain": [self.events[e].pdu for e in sorted(chain)]})

    # ------------------------------------------------------------------ sending

    def transaction(self, pdus: list[dict[str, Any]], edus: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"origin": self.server_name, "origin_server_ts": int(time.time() * 1000),
                                "pdus": pdus}
        if edus:
            body["edus"] = edus
        return body

    async def send_raw(
        self, server: RunningServer, txn_id: str, body: Any, *, raw: bytes | None = None,
        sign_content: Any = None,
    ) -> tuple[int, Any]:
        """PUT /send/{txn_id} with an X-Matrix header. ``raw`` sends those bytes instead of
        ``body`` (the signature then covers ``sign_content``)."""
        assert self._session is not None
        dest = server.services.config.server_name
        path = f"/_matrix/federation/v1/send/{quote(txn_id, safe='')}"
        content = body if raw is None else sign_content
        header = authorization_header(self.key, self.server_name, dest, "PUT", path, content)
        data = raw if raw is not None else json.dumps(body).encode()
        async with self._session.put(
            f"https://localhost:{server.federation_port}{path}", data=data,
            headers={"Authorization": header, "Content-Type": "application/json"},
        ) as resp:
            return resp.status, await resp.json()

    async def send(self, server: RunningServer, events: list[Event], edus: list[dict[str, Any]] | None = None,
                   txn_id: str | None = None) -> tuple[int, Any]:
        if txn_id is None:
            self.txn_counter += 1
            txn_id = f"txn{self.txn_counter}"
        return await self.send_raw(server, txn_id, self.transaction([e.pdu for e in events], edus))

    async def get(self, server: RunningServer, path: str, method: str = "GET", content: Any = None) -> tuple[int, Any]:
        """A signed request to our server (the read endpoints)."""
        assert self._session is not None
        dest = server.services.config.server_name
        header = authorization_header(self.key, self.server_name, dest, method, path, content)
        async with self._session.request(
            method, URL(f"https://localhost:{server.federation_port}{path}", encoded=True),
            data=None if content is None else json.dumps(content).encode(),
            headers={"Authorization": header, "Content-Type": "application/json"},
        ) as resp:
            return resp.status, await resp.json()


@asynccontextmanager
async def fake_remote(ca: tuple[Path, Path], directory: Path, host: str = "localhost") -> AsyncIterator[FakeRemote]:
    remote = FakeRemote(ca, directory, host)
    await remote.start()
    try:
        yield remote
    finally:
        await remote.stop()
