"""GET /capabilities: the room versions this server supports (events/versions.py), the one
it creates by default (``rooms.default_room_version``), and which optional account features
exist here (password change; no 3PIDs, no login tokens; display name and avatar may be
set). And the listings of optional features this server does not have, answered as the
spec's shapes say a server without them answers: no third-party identifiers,
no third-party protocols (bridges), no TURN server."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from homeserver.client_api.common import Authenticator
from homeserver.events.versions import DEFAULT_ROOM_VERSION, KNOWN_ROOM_VERSIONS
from homeserver.http import json_response


class CapabilitiesAPI:
    """``GET /capabilities``: what this server offers of the optional client API."""

    def __init__(self, auth: Authenticator, default_room_version: str = DEFAULT_ROOM_VERSION.identifier) -> None:
        self.auth = auth
        self.default_room_version = default_room_version  # rooms.default_room_version

    def routes(self) -> list[web.RouteDef]:
        p = "/_matrix/client/v3"
        return [
            web.get(f"{p}/capabilities", self.capabilities),
            web.get(f"{p}/account/3pid", self.listing({"threepids": []})),
            web.get(f"{p}/thirdparty/protocols", self.listing({})),
            # No TURN server configured: an empty object, as Synapse answers then.
            web.get(f"{p}/voip/turnServer", self.listing({})),
        ]

    def listing(self, body: dict[str, Any]) -> Callable[[web.Request], Awaitable[web.Response]]:
        """A handler answering ``body`` to an authenticated user."""

        async def handler(request: web.Request) -> web.Response:
            await self.auth.requester(request)
            return json_response(body)

        return handler

    async def capabilities(self, request: web.Request) -> web.Response:
        await self.auth.requester(request)
        versions = {v.identifier: "stable" if v.stable else "unstable" for v in KNOWN_ROOM_VERSIONS.values()}
        return json_response({"capabilities": {
            "m.room_versions": {"default": self.default_room_version, "available": versions},
            # POST /account/password exists; no 3PID endpoints, no /login/get_token.
            "m.change_password": {"enabled": True},
            "m.3pid_changes": {"enabled": False},
            "m.get_login_token": {"enabled": False},
            # PUT /profile/{userId}/displayname and /avatar_url exist; no other field does.
            "m.set_displayname": {"enabled": True},
            "m.set_avatar_url": {"enabled": True},
            "m.profile_fields": {"enabled": True, "allowed": ["displayname", "avatar_url"]},
            "m.forget_forced_upon_leave": {"enabled": False},
        }})
