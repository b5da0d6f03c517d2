"""Space hierarchy and jumping to a date:

- ``GET /_matrix/client/v1/rooms/{roomId}/hierarchy`` (``from``, ``limit``, ``max_depth``,
  ``suggested_only``): one page of the space tree (``rooms/space_walk.py``), rooms we do
  not hold asked of other servers (a root we do not hold too: of the servers named by
  ``via`` query parameters, a non-spec hint, of the inviter's and of the room ID's).
  403 M_FORBIDDEN when the user may not see the room, 400 M_INVALID_PARAM for a bad
  parameter or a ``from`` token that is unknown, expired or was given with other parameters.
- ``GET /_matrix/client/v1/rooms/{roomId}/timestamp_to_event`` (``ts``, ``dir``): the event
  closest to a time (``rooms/timestamps.py``), other servers of the room asked when our
  answer is not conclusive. The user must be allowed to read the room
  (``client_api/access.py``, 403 M_FORBIDDEN); a user who left gets only events up to
  their leave, from what we hold. 404 M_NOT_FOUND when there is none.
"""

from __future__ import annotations

from aiohttp import web

from homeserver.client_api.access import room_access
from homeserver.client_api.common import Authenticator, query_bool, room_errors
from homeserver.errors import MatrixError, not_found
from homeserver.http import json_response
from homeserver.rooms.space_walk import BadPaginationToken, SpaceWalker
from homeserver.rooms.timestamps import TimestampLookup, TimestampQueryError, parse_query
from homeserver.storage.timeline import TimelineStore

V1 = "/_matrix/client/v1/rooms/{roomId}"
DEFAULT_LIMIT = 50
MAX_LIMIT = 100
MAX_DEPTH = 100


def _int_param(request: web.Request, name: str, low: int) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise MatrixError(400, "M_INVALID_PARAM", f"{name} must be an integer") from None
    if value < low:
        raise MatrixError(400, "M_INVALID_PARAM", f"{name} must be at least {low}")
    return value


class HierarchyAPI:
    def __init__(
        self, auth: Authenticator, walker: SpaceWalker, timestamps: TimestampLookup, timeline: TimelineStore
    ) -> None:
        self.auth = auth
        self.walker = walker
        self.timestamps = timestamps
        self.timeline = timeline

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(V1 + "/hierarchy", self.get_hierarchy),
            web.get(V1 + "/timestamp_to_event", self.get_timestamp_to_event),
        ]

    async def get_hierarchy(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        limit = min(_int_param(request, "limit", 1) or DEFAULT_LIMIT, MAX_LIMIT)
        max_depth = _int_param(request, "max_depth", 0)
        if max_depth is not None:
            max_depth = min(max_depth, MAX_DEPTH)
        suggested_only = query_bool(request, "suggested_only")
        token = request.query.get("from") or None
        with room_errors():
            try:
                page = await self.walker.page(
                    req.user_id, request.match_info["roomId"], suggested_only=suggested_only,
                    max_depth=max_depth, limit=limit, token=token, hints=request.query.getall("via", []),
                )
            except BadPaginationToken as e:
                raise MatrixError(400, "M_INVALID_PARAM", str(e)) from None
        return json_response(page)

    async def get_timestamp_to_event(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        room_id = request.match_info["roomId"]
        try:
            ts, forward = parse_query(request.query.get("ts"), request.query.get("dir"))
        except TimestampQueryError as e:
            raise MatrixError(400, e.errcode, e.reason) from None
        access = await room_access(self.timeline, req.user_id, room_id)
        found = await self.timestamps.find(room_id, ts, forward, ask_others=access.upto is None)
        if found is not None and access.upto is not None:
            ordering = await self.timeline.stream_ordering_of(found.event_id)
            if ordering is None or ordering > access.upto:
                found = None
        if found is None:
            direction = "forward" if forward else "backward"
            raise not_found(f"Unable to find an event from {ts} in the {direction} direction")
        return json_response({"event_id": found.event_id, "origin_server_ts": found.origin_server_ts})
