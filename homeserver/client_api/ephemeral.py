"""Typing notifications, read receipts and read markers from our users: typing and
receipts are stored in the tables the inbound worker also fills (storage/schema/0003), sent as
EDUs to the other servers in the room, and delivered to local clients in /sync's ephemeral
section. ``POST /rooms/{roomId}/read_markers`` sets the ``m.fully_read`` marker (room
account data, account_data.py) and the ``m.read`` / ``m.read.private`` receipts, each as
the receipt endpoint would.

Guarantees: only a joined member may type or send a receipt or marker, only for
themselves and only for an accepted event of the room; ``m.read.private`` never leaves the
server; local /sync long-polls are woken at once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from homeserver.client_api.access import room_access
from homeserver.client_api.account_data import AccountData
from homeserver.client_api.common import MAX_ID_BYTES, Authenticator, Requester, require_limited_str
from homeserver.config import ClientConfig
from homeserver.errors import MatrixError, forbidden, not_found
from homeserver.http import json_response, read_json_object
from homeserver.notifier import Notifier
from homeserver.rooms.outbox import Outbox
from homeserver.storage.events import EventStore, Outcome
from homeserver.storage.timeline import TimelineStore
from homeserver.util.clock import SYSTEM_CLOCK, Clock

RECEIPT_TYPES = ("m.read", "m.read.private", "m.fully_read")


class EphemeralAPI:
    def __init__(
        self, server_name: str, config: ClientConfig, auth: Authenticator, events: EventStore,
        timeline: TimelineStore, sender: Outbox, notifier: Notifier,
        *, account_data: AccountData | None = None, clock: Clock = SYSTEM_CLOCK,
        on_receipt: Callable[[str, str, str, str, str], Awaitable[None]] | None = None,
        on_activity: Callable[[str], None] | None = None,
    ) -> None:
        # Told of each user who sent a receipt or a typing notice (presence: activity).
        self.on_activity = on_activity
        # Told of each stored receipt (user, room, type, event, thread): push counts reset.
        self.on_receipt = on_receipt
        self.clock = clock
        self.server_name = server_name
        self.config = config
        self.auth = auth
        self.events = events
        self.timeline = timeline
        self.sender = sender
        self.notifier = notifier
        self.account_data = account_data

    def routes(self) -> list[web.RouteDef]:
        r = "/_matrix/client/v3/rooms/{room_id}"
        return [
            web.put(f"{r}/typing/{{user_id}}", self.typing),
            web.post(f"{r}/receipt/{{receipt_type}}/{{event_id}}", self.receipt),
            web.post(f"{r}/read_markers", self.read_markers),
        ]

    async def _remote_servers(self, room_id: str) -> set[str]:
        servers = await self.events.joined_servers(await self.events.get_current_state_ids(room_id))
        servers.discard(self.server_name)
        return servers

    async def typing(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        room_id, user_id = request.match_info["room_id"], request.match_info["user_id"]
        if user_id != req.user_id:
            raise forbidden("You can only set your own typing state")
        body = await read_json_object(request, self.config.max_body_bytes)
        typing = body.get("typing")
        if not isinstance(typing, bool):
            raise MatrixError(400, "M_BAD_JSON", "typing must be a boolean")
        timeout = body.get("timeout")
        if typing and timeout is not None and (not isinstance(timeout, int) or isinstance(timeout, bool)):
            raise MatrixError(400, "M_BAD_JSON", "timeout must be an integer")
        access = await room_access(self.timeline, user_id, room_id)
        if access.membership != "join":
            raise forbidden("You are not in this room")
        # The server's own 30 s lifetime applies (the client re-sends while typing).
        await self.timeline.set_typing(room_id, user_id, typing, self.clock.time_ms())
        if self.on_activity is not None:
            self.on_activity(user_id)
        self.notifier.wake_room(room_id)
        content = {"room_id": room_id, "user_id": user_id, "typing": typing}
        await self.sender.enqueue_edu("m.typing", content, await self._remote_servers(room_id))
        return json_response({})

    async def receipt(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        room_id = request.match_info["room_id"]
        receipt_type, event_id = request.match_info["receipt_type"], request.match_info["event_id"]
        if receipt_type not in RECEIPT_TYPES:
            raise MatrixError(400, "M_INVALID_PARAM", f"receipt type must be one of {', '.join(RECEIPT_TYPES)}")
        body = await read_json_object(request, self.config.max_body_bytes) if request.can_read_body else {}
        thread_id = require_limited_str(body, "thread_id", MAX_ID_BYTES, optional=True)
        await self._check_member(req, room_id)
        await self._set_receipt(req, room_id, receipt_type, event_id, thread_id or "")
        return json_response({})

    async def read_markers(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        room_id = request.match_info["room_id"]
        body = await read_json_object(request, self.config.max_body_bytes)
        markers: list[tuple[str, str]] = []
        for receipt_type in ("m.fully_read", "m.read", "m.read.private"):
            event_id = body.get(receipt_type)
            if event_id is None:
                continue
            if not isinstance(event_id, str) or not event_id:
                raise MatrixError(400, "M_BAD_JSON", f"{receipt_type} must be an event ID")
            markers.append((receipt_type, event_id))
        await self._check_member(req, room_id)
        for _, event_id in markers:  # all checked before any is set
            await self._check_event(room_id, event_id)
        for receipt_type, event_id in markers:
            await self._set_receipt(req, room_id, receipt_type, event_id, "")
        return json_response({})

    async def _check_member(self, req: Requester, room_id: str) -> None:
        access = await room_access(self.timeline, req.user_id, room_id)
        if access.membership != "join":
            raise forbidden("You are not in this room")

    async def _check_event(self, room_id: str, event_id: str) -> None:
        stored = await self.events.get_event(event_id)
        if stored is None or stored.event.room_id != room_id or stored.outcome is not Outcome.ACCEPTED:
            raise not_found("Event not found")

    async def _set_receipt(self, req: Requester, room_id: str, receipt_type: str, event_id: str,
                           thread_id: str) -> None:
        """Store a checked receipt (or the ``m.fully_read`` marker), wake /sync, send ``m.read`` out."""
        await self._check_event(room_id, event_id)
        if self.on_activity is not None:
            self.on_activity(req.user_id)
        if receipt_type == "m.fully_read":
            if self.account_data is not None:
                await self.account_data.set(req.user_id, room_id, "m.fully_read", {"event_id": event_id})
            return
        now = self.clock.time_ms()
        data: dict[str, Any] = {"ts": now}
        if thread_id:
            data["thread_id"] = thread_id
        await self.timeline.store_receipt(room_id, receipt_type, req.user_id, thread_id, event_id, data, now)
        if self.on_receipt is not None:
            await self.on_receipt(req.user_id, room_id, receipt_type, event_id, thread_id)
        self.notifier.wake_room(room_id)
        if receipt_type == "m.read":
            content = {room_id: {"m.read": {req.user_id: {"event_ids": [event_id], "data": data}}}}
            await self.sender.enqueue_edu("m.receipt", content, await self._remote_servers(room_id))
