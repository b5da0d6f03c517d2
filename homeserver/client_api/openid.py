"""``POST /_matrix/client/v3/user/{userId}/openid/request_token``: an OpenID token for the
user themself (403 M_FORBIDDEN for anyone else), which a third party (an integration
manager) exchanges for the user's ID with our federation ``GET /openid/userinfo``.

The token is random (256 bits), stored only as its SHA-256 (``storage/openid.py``), and
good for ``TOKEN_SECONDS`` of the server's clock, for that exchange only.
"""

from __future__ import annotations

import secrets

from aiohttp import web

from homeserver.client_api.common import Authenticator
from homeserver.config import ClientConfig
from homeserver.errors import forbidden
from homeserver.http import json_response, read_json_object
from homeserver.storage.openid import OpenIdStore
from homeserver.util.clock import SYSTEM_CLOCK, Clock

TOKEN_SECONDS = 3600


class OpenIdAPI:
    def __init__(
        self, server_name: str, config: ClientConfig, auth: Authenticator, store: OpenIdStore,
        *, clock: Clock = SYSTEM_CLOCK, lifetime_seconds: int = TOKEN_SECONDS,
    ) -> None:
        self.server_name = server_name
        self.config = config
        self.auth = auth
        self.store = store
        self.clock = clock
        self.lifetime_seconds = lifetime_seconds

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/_matrix/client/v3/user/{userId}/openid/request_token", self.request_token)]

    async def request_token(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        if request.match_info["userId"] != req.user_id:
            raise forbidden("You may only request OpenID tokens for yourself")
        if request.can_read_body:
            await read_json_object(request, self.config.max_body_bytes)  # {}: no fields defined
        token = secrets.token_urlsafe(32)
        now = self.clock.time_ms()
        await self.store.issue(token, req.user_id, now + self.lifetime_seconds * 1000, now)
        return json_response({
            "access_token": token,
            "token_type": "Bearer",
            "matrix_server_name": self.server_name,
            "expires_in": self.lifetime_seconds,
        })
