"""Room aliases and the published room directory for clients.

``/directory/room/{roomAlias}``: PUT (a member maps one of our aliases to the room), GET
(no access token, as the spec says; another server's alias is resolved over federation)
and DELETE; ``/rooms/{roomId}/aliases``; ``/directory/list/room/{roomId}`` (GET without a
token, PUT by a moderator); ``/publicRooms`` GET (no token for our own directory) and POST,
with ``server`` reading another server's directory over federation (that one needs a token:
an anonymous request does not make us send one).

Handlers are thin: parse, call the ``RoomDirectory`` (rooms/directory.py), map its errors
with ``directory_errors`` (M_INVALID_PARAM, 409 M_UNKNOWN for an alias in use, M_NOT_FOUND,
M_FORBIDDEN, 502 when another server cannot be read).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import web

from homeserver.client_api.common import Authenticator, query_int, remote_failure, require_str, room_errors
from homeserver.config import ClientConfig
from homeserver.errors import MatrixError
from homeserver.http import json_response, read_json_object
from homeserver.rooms.directory import AliasInUse, InvalidParam, RemoteDirectoryFailed, RoomDirectory

MAX_LIMIT = 500


@contextmanager
def directory_errors(in_use: MatrixError | None = None) -> Iterator[None]:
    """The directory's errors as Matrix errors (inside ``room_errors`` for the rest).
    ``in_use``: the error for an alias in use (409 M_UNKNOWN unless given)."""
    try:
        yield
    except InvalidParam as e:
        raise MatrixError(400, "M_INVALID_PARAM", e.reason) from None
    except AliasInUse as e:
        raise in_use or MatrixError(409, "M_UNKNOWN", f"Room alias {e.room_alias} already exists") from None
    except RemoteDirectoryFailed as e:
        raise remote_failure(e) from None


class DirectoryAPI:
    def __init__(self, server_name: str, config: ClientConfig, auth: Authenticator, directory: RoomDirectory) -> None:
        self.server_name = server_name
        self.config = config
        self.auth = auth
        self.directory = directory

    def routes(self) -> list[web.RouteDef]:
        p = "/_matrix/client/v3"
        alias = f"{p}/directory/room/{{room_alias}}"
        listing = f"{p}/directory/list/room/{{room_id}}"
        return [
            web.put(alias, self.put_alias),
            web.get(alias, self.get_alias),
            web.delete(alias, self.delete_alias),
            web.get(f"{p}/rooms/{{room_id}}/aliases", self.room_aliases),
            web.get(listing, self.get_visibility),
            web.put(listing, self.put_visibility),
            web.get(f"{p}/publicRooms", self.get_public_rooms),
            web.post(f"{p}/publicRooms", self.post_public_rooms),
        ]

    # ------------------------------------------------------------------ aliases

    async def put_alias(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        body = await read_json_object(request, self.config.max_body_bytes)
        room_id = require_str(body, "room_id")
        assert room_id is not None
        with room_errors(), directory_errors():
            if not room_id.startswith("!"):
                raise InvalidParam("room_id is not a room ID")
            await self.directory.create_alias(req.user_id, request.match_info["room_alias"], room_id)
        return json_response({})

    async def get_alias(self, request: web.Request) -> web.Response:
        room_alias = request.match_info["room_alias"]
        with room_errors(), directory_errors():
            room_id, servers = await self.directory.resolve(room_alias)
        return json_response({"room_id": room_id, "servers": servers})

    async def delete_alias(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        with room_errors(), directory_errors():
            await self.directory.delete_alias(req.user_id, request.match_info["room_alias"])
        return json_response({})

    async def room_aliases(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        with room_errors(), directory_errors():
            aliases = await self.directory.local_aliases(req.user_id, request.match_info["room_id"])
        return json_response({"aliases": aliases})

    # ------------------------------------------------------------------ published rooms

    async def get_visibility(self, request: web.Request) -> web.Response:
        with room_errors(), directory_errors():
            visibility = await self.directory.get_visibility(request.match_info["room_id"])
        return json_response({"visibility": visibility})

    async def put_visibility(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        body = await read_json_object(request, self.config.max_body_bytes)
        visibility = require_str(body, "visibility", optional=True) or "public"
        with room_errors(), directory_errors():
            await self.directory.set_visibility(req.user_id, request.match_info["room_id"], visibility)
        return json_response({})

    async def get_public_rooms(self, request: web.Request) -> web.Response:
        server = request.query.get("server") or self.server_name
        if server != self.server_name:
            await self.auth.requester(request)
        limit = query_int(request, "limit", 0, low=0, high=MAX_LIMIT)
        since = request.query.get("since") or None
        return json_response(await self._list(server, limit=limit, since=since))

    async def post_public_rooms(self, request: web.Request) -> web.Response:
        await self.auth.requester(request)
        server = request.query.get("server") or self.server_name
        body = await read_json_object(request, self.config.max_body_bytes)
        limit = body.get("limit", 0)
        if limit is None:
            limit = 0
        if not isinstance(limit, int) or isinstance(limit, bool):
            raise MatrixError(400, "M_BAD_JSON", "limit must be an integer")
        since = require_str(body, "since", optional=True) or None
        flt = body.get("filter") or {}
        if not isinstance(flt, dict):
            raise MatrixError(400, "M_BAD_JSON", "filter must be an object")
        search = require_str(flt, "generic_search_term", optional=True) or None
        room_types = flt.get("room_types")
        if room_types is not None and (
            not isinstance(room_types, list) or not all(t is None or isinstance(t, str) for t in room_types)
        ):
            raise MatrixError(400, "M_BAD_JSON", "filter.room_types must be a list of strings or nulls")
        return json_response(await self._list(
            server, limit=max(0, min(limit, MAX_LIMIT)), since=since, search=search, room_types=room_types,
        ))

    async def _list(self, server: str, **kw: Any) -> dict[str, Any]:
        with room_errors(), directory_errors():
            if server == self.server_name:
                return await self.directory.public_rooms(**kw)
            return await self.directory.remote_public_rooms(server, **kw)
