"""Inbound request authentication: every federation request is X-Matrix verified.

Only the key endpoints and ``/_matrix/federation/v1/version`` are open. A missing or
malformed header, an unknown key, a bad signature or a destination that is not this
server is answered 401 M_UNAUTHORIZED before any handler runs. The verified origin is
stored on the request as ``request[ORIGIN]``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from homeserver.crypto.keyring import KeyNotFoundError, KeyRing
from homeserver.crypto.xmatrix import XMatrixError, parse_authorization, pdu_texts, verify_request
from homeserver.errors import MatrixError, unauthorized
from homeserver.events.identifiers import is_valid_server_name
from homeserver.http import Handler, parse_json_noting_floats, read_body

ORIGIN = web.RequestKey("origin", str)
BODY: web.RequestKey[Any] = web.RequestKey("body", object)
# /send: the canonical JSON of each PDU of the body (computed for the signature check).
PDU_TEXTS: web.RequestKey[Any] = web.RequestKey("pdu_texts", object)
# Whether the body held no float (canonical JSON of its parts may use the fast encoder).
FLOAT_FREE: web.RequestKey[bool] = web.RequestKey("float_free", bool)
# Largest body any federation endpoint accepts; endpoints may bound it further.
MAX_FEDERATION_BODY = 8 * 1024 * 1024

OPEN_PATHS = ("/_matrix/key/", "/_matrix/federation/v1/version", "/.well-known/")


def make_auth_middleware(
    server_name: str,
    keyring: KeyRing,
    on_authenticated: Callable[[str], Awaitable[None]] | None = None,
) -> Middleware:
    @web.middleware
    async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(OPEN_PATHS) or not request.path.startswith("/_matrix/"):
            return await handler(request)
        headers = request.headers.getall("Authorization", [])
        if not headers:
            raise unauthorized("Missing X-Matrix Authorization header")
        raw = await read_body(request, MAX_FEDERATION_BODY)
        content, has_floats = parse_json_noting_floats(raw) if raw else (None, False)
        parts = pdu_texts(content, float_free=not has_floats)
        last_error = "no X-Matrix Authorization header"
        for header in headers:
            try:
                auth = parse_authorization(header)
            except XMatrixError as e:
                last_error = str(e)
                continue
            if auth.destination is not None and auth.destination != server_name:
                raise unauthorized(
                    f"Request is for destination {auth.destination}, this server is {server_name}"
                )
            if not is_valid_server_name(auth.origin):
                raise unauthorized(f"Origin {auth.origin!r} is not a valid server name")
            try:
                key = await keyring.get_verify_key(auth.origin, auth.key_id)
            except KeyNotFoundError as e:
                raise unauthorized(f"Cannot verify the request: {e}") from None
            try:
                verify_request(auth, key, request.method, request.raw_path, server_name, content, parts)
            except XMatrixError as e:
                raise unauthorized(str(e)) from None
            request[ORIGIN] = auth.origin
            request[BODY] = content
            request[PDU_TEXTS] = parts
            request[FLOAT_FREE] = not has_floats
            if on_authenticated is not None:
                await on_authenticated(auth.origin)
            return await handler(request)
        raise MatrixError(401, "M_UNAUTHORIZED", f"Invalid Authorization header: {last_error}")

    return auth_middleware
