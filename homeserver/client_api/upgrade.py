"""``POST /_matrix/client/v3/rooms/{roomId}/upgrade`` ``{"new_version": ...}``: replace a
room by a new one of another version (``rooms/upgrade.py``); answers
``{"replacement_room": ...}``. 400 M_UNSUPPORTED_ROOM_VERSION for a version we do not
implement, 403 M_FORBIDDEN without the power to send ``m.room.tombstone``, 404 for an
unknown room."""

from __future__ import annotations

from aiohttp import web

from homeserver.client_api.common import Authenticator, room_errors
from homeserver.config import ClientConfig
from homeserver.errors import MatrixError
from homeserver.http import json_response, read_json_object
from homeserver.rooms.directory import RoomDirectory
from homeserver.rooms.service import RoomService
from homeserver.rooms.upgrade import upgrade_room
from homeserver.util.locks import KeyedLock


class UpgradeAPI:
    def __init__(
        self, config: ClientConfig, auth: Authenticator, rooms: RoomService, directory: RoomDirectory | None,
    ) -> None:
        self.config = config
        self.auth = auth
        self.rooms = rooms
        self.directory = directory
        # One upgrade of a room at a time (a retried request would otherwise make two rooms).
        self._locks: KeyedLock[str] = KeyedLock()

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/_matrix/client/v3/rooms/{room_id}/upgrade", self.upgrade)]

    async def upgrade(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        room_id = request.match_info["room_id"]
        body = await read_json_object(request, self.config.max_body_bytes)
        new_version = body.get("new_version")
        if not isinstance(new_version, str) or not new_version:
            raise MatrixError(400, "M_BAD_JSON", "new_version must be a string")
        async with self._locks(room_id):
            tombstone = await self.rooms.get_state_event(room_id, "m.room.tombstone", "")
            if tombstone is not None and isinstance(tombstone.content.get("replacement_room"), str):
                raise MatrixError(400, "M_BAD_STATE", "This room has already been replaced")
            with room_errors():
                new_room = await upgrade_room(self.rooms, self.directory, req.user_id, room_id, new_version)
        return json_response({"replacement_room": new_room})
