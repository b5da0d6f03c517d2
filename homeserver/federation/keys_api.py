"""Open federation endpoints (no X-Matrix): our published keys, the notary endpoints that
serve other servers' keys with our signature added (``crypto/notary.py``), the server
version, and ``/.well-known/matrix/server`` when a delegation is configured."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from homeserver import __version__
from homeserver.config import Config
from homeserver.crypto.keyring import KeyRing
from homeserver.crypto.keys import ServerSigningKey, server_key_document
from homeserver.crypto.notary import KeyCriteria, KeyNotary, NotaryQueryError, parse_query_body, parse_query_params
from homeserver.errors import MatrixError, not_found
from homeserver.http import json_response, read_json_object
from homeserver.metrics import Metrics
from homeserver.util.clock import SYSTEM_CLOCK, Clock


def key_routes(
    config: Config,
    key: ServerSigningKey,
    clock: Clock = SYSTEM_CLOCK,
    *,
    keyring: KeyRing | None = None,
    metrics: Metrics | None = None,
) -> list[web.RouteDef]:
    """The key and version routes; the notary routes too when given the key ring."""

    def own_document() -> dict[str, Any]:
        valid_until = clock.time_ms() + config.key_validity_period_ms
        return server_key_document(config.server_name, key, valid_until, config.old_verify_keys)

    async def server_keys(request: web.Request) -> web.Response:
        return json_response(own_document())

    async def version(request: web.Request) -> web.Response:
        return json_response({"server": {"name": "homeserver", "version": __version__}})

    routes = [
        web.get("/_matrix/key/v2/server", server_keys),
        web.get("/_matrix/key/v2/server/{keyId}", server_keys),
        web.get("/_matrix/federation/v1/version", version),
    ]
    if keyring is None or metrics is None:
        return routes
    notary = KeyNotary(config.server_name, key, keyring, own_document, metrics, clock)
    body_limit = config.federation_limits.default_body_bytes

    async def answer(parse: Callable[[], dict[str, KeyCriteria]]) -> web.Response:
        try:
            criteria = parse()
        except NotaryQueryError as e:
            raise MatrixError(400, "M_INVALID_PARAM" if e.param else "M_BAD_JSON", str(e)) from None
        return json_response({"server_keys": await notary.query(criteria)})

    async def query_many(request: web.Request) -> web.Response:
        body = await read_json_object(request, body_limit)
        return await answer(lambda: parse_query_body(body, clock.time_ms()))

    async def query_one(request: web.Request) -> web.Response:
        name = request.match_info["serverName"]
        ts = request.query.get("minimum_valid_until_ts")
        return await answer(lambda: parse_query_params(name, ts, clock.time_ms()))

    return [
        *routes,
        web.post("/_matrix/key/v2/query", query_many),
        web.get("/_matrix/key/v2/query/{serverName}", query_one),
    ]


def well_known_server_route(config: Config) -> web.RouteDef:
    """``GET /.well-known/matrix/server``: ``{"m.server": well_known.server}``, or 404 when
    no delegation is configured (then other servers reach us at our server name)."""

    async def well_known(request: web.Request) -> web.Response:
        if config.well_known.server is None:
            raise not_found("No server delegation is configured")
        return json_response({"m.server": config.well_known.server})

    return web.get("/.well-known/matrix/server", well_known)
