"""The federation side of end-to-end keys, for our users only (others: 403/ignored):

- ``GET /user/devices/{userId}``: the user's devices with their keys, the device-list
  ``stream_id`` (the ``stream_id`` of our last m.device_list_update about them) and their
  master and self-signing keys;
- ``POST /user/keys/query`` and ``POST /user/keys/claim``: as the client endpoints, for the
  users of ours named (no user-signing keys; signatures by others are not shown).

Bodies are bounded by ``federation/auth.py`` (``BodyLimits.default``) and the counts by
``e2e/validate.py``.
"""

from __future__ import annotations

from aiohttp import web

from homeserver.e2e.service import E2eKeys
from homeserver.e2e.validate import parse_claim, parse_query
from homeserver.errors import bad_json, forbidden, not_found
from homeserver.federation.auth import BODY
from homeserver.http import json_response
from homeserver.storage.users import UserStore

V1 = "/_matrix/federation/v1"


class FederationKeysAPI:
    def __init__(self, e2e: E2eKeys, users: UserStore) -> None:
        self._e2e = e2e
        self._users = users

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(V1 + "/user/devices/{userId}", self.on_devices),
            web.post(V1 + "/user/keys/query", self.on_query),
            web.post(V1 + "/user/keys/claim", self.on_claim),
        ]

    async def on_devices(self, request: web.Request) -> web.Response:
        user_id = request.match_info["userId"]
        if not self._e2e.is_local(user_id):
            raise forbidden("Not a user of this server")
        if not await self._users.user_exists(user_id):
            raise not_found("Unknown user")
        return json_response(await self._e2e.devices_for_federation(user_id))

    async def on_query(self, request: web.Request) -> web.Response:
        body = request.get(BODY)
        if not isinstance(body, dict):
            raise bad_json("The body must be an object")
        found = await self._e2e.local_query(parse_query(body), None)
        return json_response(found)

    async def on_claim(self, request: web.Request) -> web.Response:
        body = request.get(BODY)
        if not isinstance(body, dict):
            raise bad_json("The body must be an object")
        return json_response({"one_time_keys": await self._e2e.local_claim(parse_claim(body))})
