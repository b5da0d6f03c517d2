"""Open federation endpoints: our published keys and the server version."""

from __future__ import annotations

from aiohttp import web

from homeserver import __version__
from homeserver.config import Config
from homeserver.crypto.keys import ServerSigningKey, server_key_document
from homeserver.http import json_response
from homeserver.util.clock import SYSTEM_CLOCK, Clock


def key_routes(config: Config, key: ServerSigningKey, clock: Clock = SYSTEM_CLOCK) -> list[web.RouteDef]:
    async def server_keys(request: web.Request) -> web.Response:
        valid_until = clock.time_ms() + config.key_validity_period_ms
        return json_response(
            server_key_document(config.server_name, key, valid_until, config.old_verify_keys)
        )

    async def version(request: web.Request) -> web.Response:
        return json_response({"server": {"name": "homeserver", "version": __version__}})

    return [
        web.get("/_matrix/key/v2/server", server_keys),
        web.get("/_matrix/key/v2/server/{keyId}", server_keys),
        web.get("/_matrix/federation/v1/version", version),
    ]
