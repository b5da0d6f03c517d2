"""Room reads served to other servers beside the event graph ones (transport.py):

- ``GET /hierarchy/{roomId}``: the space's summary, its children the requesting server may
  see and those it may not (``rooms/hierarchy.py``); 404 M_NOT_FOUND when we do not hold
  the room or the requesting server may not see it. ``suggested_only`` is ``true`` or
  ``false`` (400 M_INVALID_PARAM otherwise).
- ``GET /timestamp_to_event/{roomId}?ts=&dir=f|b``: our closest event (``rooms/timestamps.py``,
  local only: a federation request never makes us ask a third server); 404 M_NOT_FOUND when
  we hold none, 403 M_FORBIDDEN when the requesting server is not in the room and the room
  is not ``world_readable`` (as ``/event``, ``/state_ids`` and ``/backfill`` check it),
  400 M_MISSING_PARAM / M_INVALID_PARAM for a missing or malformed ``ts`` or ``dir``.

Both are X-Matrix verified by the listener's middleware and read only our database.
"""

from __future__ import annotations

from aiohttp import web

from homeserver.errors import MatrixError, forbidden, not_found
from homeserver.federation.auth import ORIGIN
from homeserver.http import json_response
from homeserver.rooms.errors import RoomNotFound
from homeserver.rooms.hierarchy import SpaceHierarchy
from homeserver.rooms.timestamps import TimestampLookup, TimestampQueryError, parse_query
from homeserver.rooms.visibility import HISTORY_VISIBILITY, WORLD_READABLE, visibility_value
from homeserver.storage.events import EventStore

V1 = "/_matrix/federation/v1"


def bool_param(request: web.Request, name: str) -> bool:
    raw = request.query.get(name)
    if raw is None or raw == "false":
        return False
    if raw == "true":
        return True
    raise MatrixError(400, "M_INVALID_PARAM", f"{name} must be true or false")


def timestamp_params(request: web.Request) -> tuple[int, bool]:
    try:
        return parse_query(request.query.get("ts"), request.query.get("dir"))
    except TimestampQueryError as e:
        raise MatrixError(400, e.errcode, e.reason) from None


class FederationHierarchyAPI:
    def __init__(self, hierarchy: SpaceHierarchy, timestamps: TimestampLookup, store: EventStore) -> None:
        self._hierarchy = hierarchy
        self._timestamps = timestamps
        self._store = store

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(V1 + "/hierarchy/{roomId}", self.on_hierarchy),
            web.get(V1 + "/timestamp_to_event/{roomId}", self.on_timestamp_to_event),
        ]

    async def on_hierarchy(self, request: web.Request) -> web.Response:
        suggested_only = bool_param(request, "suggested_only")
        try:
            answer = await self._hierarchy.for_server(request[ORIGIN], request.match_info["roomId"], suggested_only)
        except RoomNotFound:
            raise not_found("Room not found or not visible to your server") from None
        return json_response(answer)

    async def on_timestamp_to_event(self, request: web.Request) -> web.Response:
        room_id = request.match_info["roomId"]
        ts, forward = timestamp_params(request)
        if await self._store.get_room_version(room_id) is None:
            raise not_found("Unknown room")
        state = await self._store.get_current_state_ids(room_id)
        if request[ORIGIN] not in await self._store.joined_servers(state):
            hv_id = state.get(HISTORY_VISIBILITY)
            hv = await self._store.get_event(hv_id) if hv_id is not None else None
            if hv is None or visibility_value(hv.event.content) != WORLD_READABLE:
                raise forbidden("Your server is not in this room")
        found = await self._timestamps.find(room_id, ts, forward, ask_others=False)
        if found is None:
            direction = "forward" if forward else "backward"
            raise not_found(f"Unable to find an event from {ts} in the {direction} direction")
        return json_response({"event_id": found.event_id, "origin_server_ts": found.origin_server_ts})
