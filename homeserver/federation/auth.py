"""Inbound request authentication: every federation request is X-Matrix verified.

Only the key endpoints, ``/_matrix/federation/v1/version`` and ``/openid/userinfo``
(which takes an OpenID token instead) are open. A missing or
malformed header, an unknown key, a bad signature or a destination that is not this
server is answered 401 M_UNAUTHORIZED before any handler runs. The verified origin is
stored on the request as ``request[ORIGIN]``.

Anyone can send a request naming any origin, so the work is ordered by cost, cheapest
first, and nothing is read that is not needed yet:

1. the ``Authorization`` header is parsed and checked (destination, origin);
2. a declared body larger than the endpoint allows is refused (413 M_TOO_LARGE);
3. the origin's key is resolved (possibly fetched: bounded by the key ring);
4. only then is the body read: within the endpoint's limit, and within a budget of
   bytes shared by every request whose signature is not verified yet (a request that
   cannot get its share in time gets 429 M_LIMIT_EXCEEDED). The body is parsed and the
   signature checked without yielding to the loop, and the budget is given back.

So a request naming a server that does not answer holds a connection, never its body.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from homeserver.config import FederationLimitsConfig
from homeserver.crypto.keyring import KeyNotFoundError, KeyRing
from homeserver.crypto.xmatrix import XMatrixAuth, XMatrixError, parse_authorization, pdu_texts, verify_request
from homeserver.errors import MatrixError, unauthorized
from homeserver.events.canonical import integral_floats_to_ints
from homeserver.events.identifiers import is_valid_server_name
from homeserver.http import Handler, parse_json_noting_floats, read_body
from homeserver.metrics import Metrics
from homeserver.util.budget import BudgetExhausted, ByteBudget

ORIGIN = web.RequestKey("origin", str)
BODY: web.RequestKey[Any] = web.RequestKey("body", object)
# /send: the canonical JSON of each PDU of the body (computed for the signature check).
PDU_TEXTS: web.RequestKey[Any] = web.RequestKey("pdu_texts", object)
# Whether the body held no float (canonical JSON of its parts may use the fast encoder).
FLOAT_FREE: web.RequestKey[bool] = web.RequestKey("float_free", bool)
# /send's body limit when none is configured (inbound.max_transaction_bytes).
DEFAULT_SEND_BODY = 4 * 1024 * 1024

# /openid/userinfo is called by integration managers with an OpenID token, not by servers.
OPEN_PATHS = ("/_matrix/key/", "/_matrix/federation/v1/version", "/.well-known/",
              "/_matrix/federation/v1/openid/userinfo")
# Endpoints whose body is one event, or lists of event IDs (get_missing_events names the
# sender's forward extremities, as many as its room has forks).
_EVENT_ENDPOINTS = frozenset({"send_join", "send_leave", "send_knock", "get_missing_events"})
_DEFAULTS = FederationLimitsConfig()


@dataclass(frozen=True, slots=True)
class BodyLimits:
    """The largest body each federation endpoint accepts, and the budget of bodies being
    read before their signature is verified (``federation_limits`` in the config)."""

    send: int = DEFAULT_SEND_BODY
    event: int = _DEFAULTS.event_body_bytes
    invite: int = _DEFAULTS.invite_body_bytes
    default: int = _DEFAULTS.default_body_bytes
    unverified_total: int = _DEFAULTS.unverified_body_bytes
    unverified_wait: float = _DEFAULTS.unverified_body_wait_seconds

    @classmethod
    def from_config(cls, limits: FederationLimitsConfig, max_transaction_bytes: int) -> BodyLimits:
        return cls(
            send=max_transaction_bytes,
            event=limits.event_body_bytes,
            invite=limits.invite_body_bytes,
            default=limits.default_body_bytes,
            unverified_total=limits.unverified_body_bytes,
            unverified_wait=limits.unverified_body_wait_seconds,
        )

    def for_path(self, path: str) -> int:
        parts = path.split("/", 5)  # "", "_matrix", "federation", "v1", name, rest
        name = parts[4] if len(parts) > 4 and parts[2] == "federation" else ""
        if name == "send":
            return self.send
        if name in _EVENT_ENDPOINTS:
            return self.event
        if name == "invite":
            return self.invite
        return self.default


def _too_large(limit: int) -> MatrixError:
    return MatrixError(413, "M_TOO_LARGE", f"Request body exceeds {limit} bytes")


def make_auth_middleware(
    server_name: str,
    keyring: KeyRing,
    on_authenticated: Callable[[str], Awaitable[None]] | None = None,
    *,
    limits: BodyLimits | None = None,
    metrics: Metrics | None = None,
    once_key_found: Callable[[web.Request], AbstractContextManager[None]] | None = None,
) -> Middleware:
    """``once_key_found``: a context entered once the origin's key is found, held through
    the body's read, the signature check and the handler (app.py's ``answer_first``)."""
    limits = limits or BodyLimits()
    budget = ByteBudget(limits.unverified_total)
    refused = metrics.inbound_requests_refused if metrics is not None else None
    if metrics is not None:
        metrics.inbound_unverified_body_bytes.set_function(lambda: budget.in_use)

    def refuse(reason: str, error: MatrixError) -> MatrixError:
        if refused is not None:
            refused.labels(reason).inc()
        return error

    def check_header(headers: list[str]) -> XMatrixAuth:
        """The first well-formed X-Matrix header, checked for destination and origin."""
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
            return auth
        raise MatrixError(401, "M_UNAUTHORIZED", f"Invalid Authorization header: {last_error}")

    @web.middleware
    async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(OPEN_PATHS) or not request.path.startswith("/_matrix/"):
            return await handler(request)
        headers = request.headers.getall("Authorization", [])
        if not headers:
            raise refuse("unauthorized", unauthorized("Missing X-Matrix Authorization header"))
        try:
            auth = check_header(headers)
        except MatrixError as e:
            raise refuse("unauthorized", e) from None
        limit = limits.for_path(request.path)
        declared = request.content_length
        if declared is not None and declared > limit:
            raise refuse("too_large", _too_large(limit))
        try:
            key = await keyring.get_verify_key(auth.origin, auth.key_id)
        except KeyNotFoundError as e:
            raise refuse("unauthorized", unauthorized(f"Cannot verify the request: {e}")) from None
        # Only now is the body read: at most ``limit`` bytes, within the shared budget
        # (waited for before the /send fast path holds the worker back).
        wanted = (declared if declared is not None else limit) if request.body_exists else 0
        try:
            held = await budget.acquire(wanted, limits.unverified_wait) if wanted else 0
        except BudgetExhausted:
            raise refuse("busy", MatrixError(
                429, "M_LIMIT_EXCEEDED", "Too many request bodies being checked; retry later",
                retry_after_ms=1000,
            )) from None
        with once_key_found(request) if once_key_found is not None else nullcontext():
            try:
                content, has_floats, parts = await read_and_verify(request, auth, key, limit, wanted)
            finally:
                budget.release(held)
            request[ORIGIN] = auth.origin
            request[BODY] = content
            request[PDU_TEXTS] = parts
            request[FLOAT_FREE] = not has_floats
            if metrics is not None:
                metrics.peers.admit(auth.origin)  # a peer now: its name may label metrics
            if on_authenticated is not None:
                await on_authenticated(auth.origin)
            return await handler(request)

    async def read_and_verify(
        request: web.Request, auth: XMatrixAuth, key: Any, limit: int, wanted: int
    ) -> tuple[Any, bool, list[bytes] | None]:
        """The body parsed, whether it held floats, the canonical JSON of its PDUs; raises
        401 when the signature does not verify, 413 past ``limit``."""
        try:
            raw = await read_body(request, limit) if wanted else b""
        except ConnectionError:  # the sender went away in the middle of its body
            raise MatrixError(400, "M_UNKNOWN", "Incomplete request body") from None
        except MatrixError as e:
            if e.status == 413:  # a chunked body that went past the limit
                refuse("too_large", e)
            raise
        # Floats kept as written: the sender signed them so (Synapse's canonical JSON writes
        # 1.0), and in rooms 1-5 a PDU's hashes and ID cover them (events/canonical.py).
        content, has_floats = parse_json_noting_floats(raw, exact=True) if raw else (None, False)
        parts = pdu_texts(content, float_free=not has_floats)
        try:
            verify_request(auth, key, request.method, request.raw_path, server_name, content, parts)
        except XMatrixError as e:
            if not has_floats:
                raise refuse("unauthorized", unauthorized(str(e))) from None
            # A sender that signed its integral floats as the spec's canonical JSON does
            # (1e3 as 1000): the body as it sees it, integers.
            content = integral_floats_to_ints(content)
            parts = pdu_texts(content)
            try:
                verify_request(auth, key, request.method, request.raw_path, server_name, content, parts)
            except XMatrixError:
                raise refuse("unauthorized", unauthorized(str(e))) from None
        return content, has_floats, parts

    return auth_middleware
