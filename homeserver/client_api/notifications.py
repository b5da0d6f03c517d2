"""``GET /_matrix/client/v3/notifications``: the notifications the user's push rules gave
(push/notify.py), newest first. ``from`` is the ``next_token`` of the previous page,
``limit`` the page size (at most 100), ``only=highlight`` keeps highlights only. Each
entry has the rule's actions, the client event, whether it is read (a receipt covered it),
the room and when it was recorded."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from homeserver.client_api.common import Authenticator, query_int
from homeserver.client_api.events import serialize_events
from homeserver.errors import MatrixError
from homeserver.http import json_response
from homeserver.storage.events import EventStore
from homeserver.storage.push import PushStore
from homeserver.storage.users import UserStore
from homeserver.util.clock import SYSTEM_CLOCK, Clock

DEFAULT_LIMIT = 20
MAX_LIMIT = 100


class NotificationsAPI:
    def __init__(self, auth: Authenticator, store: PushStore, users: UserStore, events: EventStore,
                 *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.auth = auth
        self.store = store
        self.users = users
        self.events = events
        self.clock = clock

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/_matrix/client/v3/notifications", self.get)]

    async def get(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        raw_from = request.query.get("from")
        before: int | None = None
        if raw_from:
            # Our tokens are stream positions: ASCII digits that fit a 64-bit column.
            if not (raw_from.isascii() and raw_from.isdigit() and len(raw_from) <= 18):
                raise MatrixError(400, "M_INVALID_PARAM", "from is not a token from this server")
            before = int(raw_from)
        limit = query_int(request, "limit", DEFAULT_LIMIT, low=1, high=MAX_LIMIT)
        only = request.query.get("only")
        rows = await self.store.notifications(req.user_id, before, limit, only == "highlight")
        stored = await self.events.get_events(n.event_id for n in rows)
        present = [n for n in rows if n.event_id in stored]
        serialized = await serialize_events(self.users, self.events, req, [stored[n.event_id] for n in present],
                                            clock=self.clock)
        notifications: list[dict[str, Any]] = [
            {"actions": n.actions, "event": event, "read": not n.unread, "room_id": n.room_id, "ts": n.ts}
            for n, event in zip(present, serialized, strict=True)
        ]
        body: dict[str, Any] = {"notifications": notifications}
        if len(rows) == limit:
            body["next_token"] = str(rows[-1].stream_ordering)
        return json_response(body)
