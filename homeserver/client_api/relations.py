"""Relations and threads:

- ``GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}[/{relType}[/{eventType}]]``
  (``from``, ``to``, ``limit``, ``dir``, ``recurse``): the events relating to an event
  (with ``recurse``, also to those, up to ``MAX_DEPTH`` levels), newest first unless
  ``dir=f``; ``next_batch`` while more may follow. Tokens are /messages' (``p<position>``).
- ``GET /_matrix/client/v1/rooms/{roomId}/threads`` (``include=all|participated``,
  ``from``, ``limit``): the thread roots, ordered by their latest reply, newest first,
  each with its bundled ``m.thread`` summary.

The user must be allowed to read the room (``client_api/access.py``: 403 M_FORBIDDEN for
/threads; 404 M_NOT_FOUND for /relations, whose spec answers a parent the user may not read
with 404 only); the parent event must be one they may see (404 M_NOT_FOUND); every event returned passes
history visibility (``rooms/visibility.py``) and lies within what they may read (a user
who left sees nothing after their leave). Events come with their bundled aggregations.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from homeserver.client_api.access import room_access
from homeserver.client_api.common import Authenticator, query_bool, query_int
from homeserver.client_api.events import serialize_events
from homeserver.client_api.ignored import ignored_users
from homeserver.client_api.tokens import FIRST_POSITION, page_token, parse_page_token
from homeserver.errors import MatrixError, not_found
from homeserver.http import json_response
from homeserver.rooms.visibility import HistoryVisibility
from homeserver.storage.account_data import AccountDataStore
from homeserver.storage.events import EventStore, Outcome
from homeserver.storage.relations import MAX_DEPTH, RelationStore
from homeserver.storage.timeline import TimelineStore
from homeserver.storage.users import UserStore
from homeserver.util.clock import SYSTEM_CLOCK, Clock

V1 = "/_matrix/client/v1/rooms/{room_id}"
DEFAULT_LIMIT = 10
MAX_LIMIT = 100


class RelationsAPI:
    def __init__(
        self, auth: Authenticator, events: EventStore, timeline: TimelineStore, users: UserStore,
        visibility: HistoryVisibility, *, clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.auth = auth
        self.events = events
        self.timeline = timeline
        self.users = users
        self.visibility = visibility
        self.relations = RelationStore(events.db)
        self.account_data = AccountDataStore(events.db)
        self.clock = clock

    def routes(self) -> list[web.RouteDef]:
        r = V1 + "/relations/{event_id}"
        return [
            web.get(r, self.relations_of),
            web.get(r + "/{rel_type}", self.relations_of),
            web.get(r + "/{rel_type}/{event_type}", self.relations_of),
            web.get(V1 + "/threads", self.threads),
        ]

    async def relations_of(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        room_id = request.match_info["room_id"]
        parent_id = request.match_info["event_id"]
        direction = request.query.get("dir", "b")
        if direction not in ("b", "f"):
            raise MatrixError(400, "M_INVALID_PARAM", "dir must be b or f")
        limit = query_int(request, "limit", DEFAULT_LIMIT, low=1, high=MAX_LIMIT)
        recurse = query_bool(request, "recurse")
        raw_from, raw_to = request.query.get("from"), request.query.get("to")
        from_pos = parse_page_token(raw_from) if raw_from else None
        to_pos = parse_page_token(raw_to) if raw_to else None
        try:
            access = await room_access(self.timeline, req.user_id, room_id)
        except MatrixError as e:
            raise not_found("Event not found") from e
        parent = await self.events.get_event(parent_id)
        if (
            parent is None or parent.event.room_id != room_id or parent.outcome is not Outcome.ACCEPTED
            or (access.upto is not None and parent.stream_ordering > access.upto)
            or not await self.visibility.user_may_see_event(req.user_id, parent)
        ):
            raise not_found("Event not found")
        now = access.upto if access.upto is not None else await self.events.max_stream_ordering()
        if direction == "b":
            after = FIRST_POSITION if to_pos is None else to_pos
            upto = now if from_pos is None else min(from_pos, now)
        else:
            after = FIRST_POSITION if from_pos is None else from_pos
            upto = now if to_pos is None else min(to_pos, now)
        rows = await self.relations.children(
            room_id, parent_id, rel_type=request.match_info.get("rel_type"),
            event_type=request.match_info.get("event_type"), after=after, upto=upto, limit=limit,
            newest_first=direction == "b", recurse=recurse,
        )
        found = await self.events.get_events(eid for eid, _ in rows)
        ignored = await ignored_users(self.account_data, req.user_id)
        chunk = [
            found[eid] for eid, _ in rows
            if eid in found and found[eid].outcome is Outcome.ACCEPTED and found[eid].event.sender not in ignored
        ]
        visible = await self.visibility.filter_for_user(req.user_id, room_id, chunk)
        body: dict[str, Any] = {
            "chunk": await serialize_events(self.users, self.events, req, visible, clock=self.clock),
        }
        if len(rows) == limit:
            last = rows[-1][1]
            body["next_batch"] = page_token(last - 1 if direction == "b" else last)
        if raw_from:
            body["prev_batch"] = raw_from
        if "recurse" in request.query:  # mandatory when the parameter was supplied, absent otherwise
            body["recursion_depth"] = MAX_DEPTH if recurse else 1
        return json_response(body)

    async def threads(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        room_id = request.match_info["room_id"]
        include = request.query.get("include", "all")
        if include not in ("all", "participated"):
            raise MatrixError(400, "M_INVALID_PARAM", "include must be all or participated")
        limit = query_int(request, "limit", DEFAULT_LIMIT, low=1, high=MAX_LIMIT)
        raw_from = request.query.get("from")
        before = parse_page_token(raw_from) if raw_from else None
        access = await room_access(self.timeline, req.user_id, room_id)
        rows = await self.relations.threads(
            room_id, before=before, limit=limit, participant=req.user_id if include == "participated" else None,
            upto=access.upto,
        )
        found = await self.events.get_events(root for root, _ in rows)
        ignored = await ignored_users(self.account_data, req.user_id)
        roots = [
            found[root] for root, _ in rows
            if root in found and found[root].outcome is Outcome.ACCEPTED and found[root].event.room_id == room_id
            and found[root].event.sender not in ignored
        ]
        visible = await self.visibility.filter_for_user(req.user_id, room_id, roots)
        body: dict[str, Any] = {
            "chunk": await serialize_events(self.users, self.events, req, visible, clock=self.clock),
        }
        if len(rows) == limit:
            body["next_batch"] = page_token(rows[-1][1])
        return json_response(body)
