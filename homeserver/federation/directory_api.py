"""The room directory served to other servers: ``GET /query/directory`` (our aliases:
``{room_id, servers}``, 404 M_NOT_FOUND otherwise) and ``GET``/``POST /publicRooms`` (our
published room directory, never another server's).

The requests are X-Matrix verified by the listener's middleware; each answer is read from
our database and sends nothing anywhere.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from homeserver.errors import MatrixError, bad_json, not_found
from homeserver.federation.auth import BODY
from homeserver.http import json_response
from homeserver.rooms.directory import InvalidParam, RoomDirectory, parse_alias

V1 = "/_matrix/federation/v1"
MAX_LIMIT = 500


def _invalid(message: str) -> MatrixError:
    return MatrixError(400, "M_INVALID_PARAM", message)


def _limit(value: object) -> int:
    if value is None or value == "":
        return 0
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise _invalid("limit must be an integer") from None
    if not isinstance(value, int) or isinstance(value, bool):
        raise _invalid("limit must be an integer")
    return max(0, min(value, MAX_LIMIT))


class FederationDirectoryAPI:
    def __init__(self, directory: RoomDirectory) -> None:
        self._directory = directory

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(V1 + "/query/directory", self.on_query_directory),
            web.get(V1 + "/publicRooms", self.on_get_public_rooms),
            web.post(V1 + "/publicRooms", self.on_post_public_rooms),
        ]

    async def on_query_directory(self, request: web.Request) -> web.Response:
        room_alias = request.query.get("room_alias")
        if not room_alias:
            raise MatrixError(400, "M_MISSING_PARAM", "room_alias is required")
        try:
            _, server = parse_alias(room_alias)
        except InvalidParam as e:
            raise _invalid(e.reason) from None
        found = None
        if server == self._directory.server_name:
            found = await self._directory.resolve_local(room_alias)
        if found is None:
            raise not_found("Room alias not found")
        room_id, servers = found
        return json_response({"room_id": room_id, "servers": servers})

    async def _list(self, **kw: Any) -> web.Response:
        try:
            return json_response(await self._directory.public_rooms(**kw))
        except InvalidParam as e:
            raise _invalid(e.reason) from None

    async def on_get_public_rooms(self, request: web.Request) -> web.Response:
        return await self._list(limit=_limit(request.query.get("limit")), since=request.query.get("since") or None)

    async def on_post_public_rooms(self, request: web.Request) -> web.Response:
        body = request.get(BODY)
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise bad_json("The body must be an object")
        since = body.get("since")
        if since is not None and not isinstance(since, str):
            raise bad_json("since must be a string")
        flt = body.get("filter") or {}
        if not isinstance(flt, dict):
            raise bad_json("filter must be an object")
        search = flt.get("generic_search_term")
        if search is not None and not isinstance(search, str):
            raise bad_json("filter.generic_search_term must be a string")
        room_types = flt.get("room_types")
        if room_types is not None and (
            not isinstance(room_types, list) or not all(t is None or isinstance(t, str) for t in room_types)
        ):
            raise bad_json("filter.room_types must be a list of strings or nulls")
        return await self._list(limit=_limit(body.get("limit")), since=since or None, search=search or None,
                                room_types=room_types)
