"""Small federation endpoints beside the room handshakes:

- ``GET /query/{queryType}`` for a type we do not know (``profile`` and ``directory`` are
  routed to their handlers first): 404 M_UNRECOGNIZED, the spec's answer to an endpoint a
  server does not implement (Synapse says 404 M_NOT_FOUND; the status is the same).
- ``GET /openid/userinfo?access_token=``: the user an OpenID token was issued to, while it
  has not expired (``storage/openid.py``), as ``{"sub": user_id}``; 401 M_MISSING_TOKEN
  without a token, 401 M_UNKNOWN_TOKEN for an unknown or expired one. It is called by
  integration managers, not servers: no X-Matrix signature (``federation/auth.py``
  ``OPEN_PATHS``).
- ``PUT /v1/invite/{roomId}/{eventId}``: the v1 invite. The body is the invite event itself,
  with its stripped state in ``unsigned.invite_room_state``; the answer is ``[200,
  {"event": ...}]``. The room version is the room's when we hold it, else the one its
  create event in the stripped state names, else "1" (the spec: v1 invites are for room
  versions 1 and 2, whose create events name no version); a version we do not implement
  gets 400 M_INCOMPATIBLE_ROOM_VERSION. The checks and the storing are those of
  the v2 invite (``FederationRoomsAPI.accept_invite``).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from homeserver.errors import MatrixError, bad_json
from homeserver.events.errors import UnsupportedRoomVersion
from homeserver.events.versions import RoomVersion, get_room_version
from homeserver.federation.auth import BODY, ORIGIN
from homeserver.federation.rooms_api import FederationRoomsAPI, incompatible
from homeserver.http import json_response
from homeserver.storage.events import EventStore
from homeserver.storage.openid import OpenIdStore
from homeserver.util.clock import SYSTEM_CLOCK, Clock

V1 = "/_matrix/federation/v1"
USERINFO = V1 + "/openid/userinfo"
MAX_TOKEN_LENGTH = 255


class FederationQueryAPI:
    def __init__(
        self, rooms_api: FederationRoomsAPI, store: EventStore, openid: OpenIdStore, *, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self._rooms_api = rooms_api
        self._store = store
        self._openid = openid
        self._clock = clock

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(USERINFO, self.on_userinfo),
            web.put(V1 + "/invite/{roomId}/{eventId}", self.on_invite_v1),
            # Last: the known query types are routed to their own handlers.
            web.get(V1 + "/query/{queryType}", self.on_unknown_query),
        ]

    async def on_unknown_query(self, request: web.Request) -> web.Response:
        raise MatrixError(404, "M_UNRECOGNIZED", f"Unknown query type {request.match_info['queryType'][:64]!r}")

    async def on_userinfo(self, request: web.Request) -> web.Response:
        token = request.query.get("access_token")
        if not token:
            raise MatrixError(401, "M_MISSING_TOKEN", "access_token is required")
        owner = None
        if len(token) <= MAX_TOKEN_LENGTH and token.isascii() and token.isprintable():
            owner = await self._openid.owner(token, self._clock.time_ms())
        if owner is None:
            raise MatrixError(401, "M_UNKNOWN_TOKEN", "Access token unknown or expired")
        return json_response({"sub": owner})

    async def on_invite_v1(self, request: web.Request) -> web.Response:
        room_id, event_id = request.match_info["roomId"], request.match_info["eventId"]
        pdu = request.get(BODY)
        if not isinstance(pdu, dict):
            raise bad_json("The body must be the invite event")
        unsigned = pdu.get("unsigned")
        state: Any = unsigned.get("invite_room_state", []) if isinstance(unsigned, dict) else []
        version = await self._version(room_id, state)
        signed = await self._rooms_api.accept_invite(request.match_info["roomId"], event_id, request[ORIGIN],
                                                     version, dict(pdu), state)
        return json_response([200, {"event": signed}])

    async def _version(self, room_id: str, state: Any) -> RoomVersion:
        held = await self._store.get_room_version(room_id)
        if held is not None:
            return held
        named: Any = "1"
        for entry in state if isinstance(state, list) else []:
            if isinstance(entry, dict) and entry.get("type") == "m.room.create" and entry.get("state_key") == "":
                content = entry.get("content")
                if isinstance(content, dict) and "room_version" in content:
                    named = content["room_version"]
                break
        try:
            return get_room_version(named)
        except UnsupportedRoomVersion:
            raise incompatible(str(named)[:64]) from None
