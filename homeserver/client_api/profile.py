"""Profiles: GET a user's displayname and avatar_url (local from the user store, remote
through the federation profile query), PUT our own, and carry a new name or avatar into
the member events of the rooms the user is in (in the background, paced:
``profile_fanout.py``).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from aiohttp import web

from homeserver.client_api.common import Authenticator, server_of
from homeserver.client_api.profile_fanout import ProfileFanout
from homeserver.config import ClientConfig
from homeserver.errors import MatrixError, forbidden, not_found
from homeserver.events.identifiers import is_valid_server_name
from homeserver.http import json_response, read_json_object
from homeserver.net.client import FederationClient, FederationRequestError
from homeserver.rooms.service import RoomService
from homeserver.storage.users import UserStore

log = logging.getLogger(__name__)

FIELDS = ("displayname", "avatar_url")
MAX_FIELD_LENGTH = 1024
_MEDIA_ID = re.compile(r"[A-Za-z0-9_-]+")


def is_mxc_uri(value: str) -> bool:
    """``mxc://<server name>/<media ID>``."""
    if not value.startswith("mxc://"):
        return False
    server, _, media_id = value[len("mxc://"):].partition("/")
    return is_valid_server_name(server) and _MEDIA_ID.fullmatch(media_id) is not None
REMOTE_PROFILE_TIMEOUT = 10.0


class ProfileAPI:
    def __init__(
        self, server_name: str, config: ClientConfig, auth: Authenticator, users: UserStore,
        rooms: RoomService, federation: FederationClient, *, fanout: ProfileFanout | None = None,
    ) -> None:
        self.fanout = fanout if fanout is not None else ProfileFanout(rooms)
        self.server_name = server_name
        self.config = config
        self.auth = auth
        self.users = users
        self.rooms = rooms
        self.federation = federation

    def routes(self) -> list[web.RouteDef]:
        p = "/_matrix/client/v3/profile/{user_id}"
        return [
            web.get(p, self.get_profile),
            web.get(f"{p}/{{field}}", self.get_field),
            web.put(f"{p}/{{field}}", self.put_field),
        ]

    async def _profile(self, user_id: str, field: str | None = None) -> dict[str, Any]:
        if not user_id.startswith("@") or ":" not in user_id:
            raise MatrixError(400, "M_INVALID_PARAM", "Not a user ID")
        server = server_of(user_id)
        if server == self.server_name:
            profile = await self.users.get_profile(user_id)
            if profile is None:
                raise not_found("Profile not found")
            values = {"displayname": profile.displayname, "avatar_url": profile.avatar_url}
            return {k: v for k, v in values.items() if v is not None and (field is None or k == field)}
        query = {"user_id": user_id} if field is None else {"user_id": user_id, "field": field}
        try:
            body = await self.federation.get_json(
                server, "/_matrix/federation/v1/query/profile", query=query, timeout=REMOTE_PROFILE_TIMEOUT
            )
        except FederationRequestError as e:
            if e.status == 404:
                raise not_found("Profile not found") from None
            raise MatrixError(502, "M_UNKNOWN", "Could not fetch the remote profile") from None
        if not isinstance(body, dict):
            raise MatrixError(502, "M_UNKNOWN", "Remote server sent a malformed profile")
        return {k: body[k] for k in FIELDS if isinstance(body.get(k), str) and (field is None or k == field)}

    async def get_profile(self, request: web.Request) -> web.Response:
        return json_response(await self._profile(request.match_info["user_id"]))

    async def get_field(self, request: web.Request) -> web.Response:
        field = request.match_info["field"]
        if field not in FIELDS:
            raise not_found("Unknown profile field")
        return json_response(await self._profile(request.match_info["user_id"], field))

    async def put_field(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        user_id, field = request.match_info["user_id"], request.match_info["field"]
        if field not in FIELDS:
            raise MatrixError(400, "M_UNRECOGNIZED", "Unknown profile field")
        if user_id != req.user_id:
            raise forbidden("You can only change your own profile")
        body = await read_json_object(request, self.config.max_body_bytes)
        value = body.get(field)
        if value is not None and not isinstance(value, str):
            raise MatrixError(400, "M_BAD_JSON", f"{field} must be a string")
        if value is not None and len(value) > MAX_FIELD_LENGTH:
            raise MatrixError(400, "M_TOO_LARGE", f"{field} is too long")
        if field == "avatar_url" and value and not is_mxc_uri(value):
            # An http(s) URL would make every client showing the member fetch it (IP
            # tracking), and it is carried into each of the user's rooms.
            raise MatrixError(400, "M_INVALID_PARAM", "avatar_url must be an mxc:// URI")
        await self.users.set_profile_field(user_id, field, value or None)
        self.fanout.schedule(user_id)  # the member events follow in the background
        return json_response({})
