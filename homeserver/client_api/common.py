"""Shared pieces of the client-server API: who is asking (access-token authentication),
the CORS middleware, query-parameter parsing, the client event format, and the mapping of
room-service errors to Matrix errors.

Guarantees: every authenticated handler gets a ``Requester`` or the request fails with
M_MISSING_TOKEN / M_UNKNOWN_TOKEN (401); core errors never leak as a 500.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from homeserver.errors import MatrixError
from homeserver.events.event import Event
from homeserver.http import Handler, check_storable, is_storable_text, parse_json
from homeserver.rooms.errors import (
    BadRoomRequest,
    NotAllowed,
    RemoteJoinFailed,
    RoomError,
    RoomNotFound,
    UnsupportedVersion,
)
from homeserver.rooms.redactions import redacted
from homeserver.storage.users import UserStore

log = logging.getLogger(__name__)

# What a client is told when another server could not be reached or answered badly: never
# the connection error itself, which would tell an open port from a closed one.
REMOTE_FAILURE = "A remote server could not be reached or gave an unusable answer"

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, HEAD, POST, PUT, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "X-Requested-With, Content-Type, Authorization, Date",
}


@dataclass(frozen=True, slots=True)
class Requester:
    user_id: str
    device_id: str


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer CORS preflights for any path and mark every reply shareable (Element on the web)."""
    if request.method == "OPTIONS":
        return web.Response(status=204, headers=CORS_HEADERS)
    response = await handler(request)
    response.headers.update(CORS_HEADERS)
    return response


def access_token_of(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return None
    return request.query.get("access_token") or None


# Every path parameter is an ID of some kind (room, event, user, device, alias, event type,
# state key, transaction, account data type, filter, receipt type...): the spec's bound on
# identifiers holds for all of them.
MAX_PATH_PARAM_BYTES = 255
# Free-form IDs a client names in a body (device_id): the same bound.
MAX_ID_BYTES = 255
# A device's display name, in characters (login, register and PUT /devices/{deviceId}).
MAX_DEVICE_DISPLAY_NAME = 100


@web.middleware
async def input_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse, with 400 M_INVALID_PARAM, path parameters and query parameters that no
    database could store (a NUL character, an unpaired surrogate: ``%00`` in a URL), and
    path parameters longer than ``MAX_PATH_PARAM_BYTES``; bodies are checked by
    ``read_json_object``."""
    for name, value in request.match_info.items():
        if not is_storable_text(value):
            raise MatrixError(400, "M_INVALID_PARAM", f"{name} may not hold NUL characters or unpaired surrogates")
        if len(value.encode("utf-8")) > MAX_PATH_PARAM_BYTES:
            raise MatrixError(400, "M_INVALID_PARAM", f"{name} is longer than {MAX_PATH_PARAM_BYTES} bytes")
    for key, value in request.query.items():
        if not is_storable_text(key) or not is_storable_text(value):
            raise MatrixError(
                400, "M_INVALID_PARAM", "Query parameters may not hold NUL characters or unpaired surrogates"
            )
    return await handler(request)


class Authenticator:
    def __init__(self, users: UserStore) -> None:
        self.users = users

    async def requester(self, request: web.Request) -> Requester:
        token = access_token_of(request)
        if token is None:
            if "Authorization" in request.headers:
                raise MatrixError(401, "M_UNKNOWN_TOKEN", "Malformed Authorization header", soft_logout=False)
            raise MatrixError(401, "M_MISSING_TOKEN", "Missing access token")
        if not token.isascii() or not token.isprintable():
            # Not a token we issue (and not hashable as given: a header's undecodable bytes).
            raise MatrixError(401, "M_UNKNOWN_TOKEN", "Unknown access token", soft_logout=False)
        owner = await self.users.get_token_owner(token)
        if owner is None:
            raise MatrixError(401, "M_UNKNOWN_TOKEN", "Unknown access token", soft_logout=False)
        return Requester(owner.user_id, owner.device_id)


# ---------------------------------------------------------------------- client address

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_networks(specs: Iterable[str]) -> tuple[IpNetwork, ...]:
    """``client.trusted_proxies`` as networks (the config validated them)."""
    return tuple(ipaddress.ip_network(spec, strict=False) for spec in specs)


def _address(text: str) -> IpAddress | None:
    try:
        addr = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def client_ip(request: web.Request, trusted_proxies: Sequence[IpNetwork] = ()) -> str:
    """The address a request comes from, for per-IP limits.

    The TCP peer, unless the peer is one of ``trusted_proxies``: then ``X-Forwarded-For`` is
    read from the right (the entry the proxy itself appended) and the first address that is
    not a trusted proxy is the client. Entries left of it were written by the client and are
    never believed; a malformed entry ends the walk at the last trusted hop.
    """
    peer = _address(request.remote or "")
    if peer is None:
        return request.remote or "unknown"

    def trusted(addr: IpAddress) -> bool:
        return any(addr.version == net.version and addr in net for net in trusted_proxies)

    if not trusted_proxies or not trusted(peer):
        return str(peer)
    hops = [h for value in request.headers.getall("X-Forwarded-For", []) for h in value.split(",")]
    current = peer
    for hop in reversed(hops):
        addr = _address(hop)
        if addr is None:
            break
        current = addr
        if not trusted(addr):
            break
    return str(current)


# ---------------------------------------------------------------------- parameters


def query_int(request: web.Request, name: str, default: int, *, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise MatrixError(400, "M_INVALID_PARAM", f"{name} must be an integer") from None
    return max(low, min(high, value))


def query_bool(request: web.Request, name: str) -> bool:
    raw = request.query.get(name)
    if raw is None:
        return False
    if raw in ("true", "1"):
        return True
    if raw in ("false", "0"):
        return False
    raise MatrixError(400, "M_INVALID_PARAM", f"{name} must be true or false")


def require_str(body: dict[str, Any], key: str, *, optional: bool = False) -> str | None:
    value = body.get(key)
    if value is None:
        if optional:
            return None
        raise MatrixError(400, "M_MISSING_PARAM", f"Missing {key}")
    if not isinstance(value, str):
        raise MatrixError(400, "M_BAD_JSON", f"{key} must be a string")
    return value


def require_limited_str(
    body: dict[str, Any], key: str, max_len: int, *, optional: bool = False, in_bytes: bool = True,
) -> str | None:
    """``require_str``, and at most ``max_len`` UTF-8 bytes (characters, when not
    ``in_bytes``); 400 M_INVALID_PARAM if longer."""
    value = require_str(body, key, optional=optional)
    if value is not None and (len(value.encode("utf-8")) if in_bytes else len(value)) > max_len:
        unit = "bytes" if in_bytes else "characters"
        raise MatrixError(400, "M_INVALID_PARAM", f"{key} is longer than {max_len} {unit}")
    return value


# The list-of-strings and boolean fields of the spec's RoomEventFilter (others are ignored).
_FILTER_LISTS = ("types", "not_types", "senders", "not_senders", "rooms", "not_rooms")
_FILTER_BOOLS = ("contains_url", "include_redundant_members", "lazy_load_members", "unread_thread_notifications")


def parse_room_event_filter(raw: str | None) -> dict[str, Any] | None:
    """The ``filter`` query parameter of ``/messages``: a RoomEventFilter as JSON (None if
    absent). 400 M_NOT_JSON if it is not JSON, M_INVALID_PARAM if it is not a filter."""
    if not raw:
        return None
    value = parse_json(raw.encode("utf-8"))
    check_storable(value)
    if not isinstance(value, dict):
        raise MatrixError(400, "M_INVALID_PARAM", "filter must be a JSON object")
    limit = value.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise MatrixError(400, "M_INVALID_PARAM", "filter.limit must be a positive integer")
    for key in _FILTER_LISTS:
        items = value.get(key)
        if items is not None and (not isinstance(items, list) or not all(isinstance(i, str) for i in items)):
            raise MatrixError(400, "M_INVALID_PARAM", f"filter.{key} must be a list of strings")
    for key in _FILTER_BOOLS:
        if key in value and not isinstance(value[key], bool):
            raise MatrixError(400, "M_INVALID_PARAM", f"filter.{key} must be a boolean")
    return value


def require_user_id(body: dict[str, Any], key: str = "user_id") -> str:
    value = require_str(body, key)
    assert value is not None
    if not value.startswith("@") or ":" not in value:
        raise MatrixError(400, "M_INVALID_PARAM", f"{key} is not a user ID")
    return value


# ---------------------------------------------------------------------- errors


@contextmanager
def room_errors() -> Iterator[None]:
    """Translate the room service's errors into the spec's Matrix errors."""
    try:
        yield
    except RoomNotFound as e:
        raise MatrixError(404, "M_NOT_FOUND", str(e) or "Room not found") from None
    except NotAllowed as e:
        raise MatrixError(403, "M_FORBIDDEN", str(e) or "Not allowed") from None
    except UnsupportedVersion as e:
        raise MatrixError(400, "M_UNSUPPORTED_ROOM_VERSION", str(e) or "Unsupported room version") from None
    except BadRoomRequest as e:
        raise MatrixError(400, "M_BAD_JSON", str(e) or "Bad request") from None
    except RemoteJoinFailed as e:
        raise remote_failure(e) from None
    except RoomError as e:
        raise MatrixError(400, "M_UNKNOWN", str(e) or "Room request failed") from None


def remote_failure(e: RemoteJoinFailed) -> MatrixError:
    """502 M_UNKNOWN with a generic text; the reason goes to the log only."""
    log.info("remote request failed", extra={"reason": e.reason[:500]})
    return MatrixError(502, "M_UNKNOWN", REMOTE_FAILURE)


# ---------------------------------------------------------------------- event format


def client_event(
    event: Event,
    *,
    now_ms: int,
    transaction_id: str | None = None,
    prev_content: dict[str, Any] | None = None,
    include_room_id: bool = True,
    redacted_because: Event | None = None,
) -> dict[str, Any]:
    """The spec's ClientEvent for ``event`` (the federation-only fields left out); with
    ``redacted_because``, the event redacted and that redaction in ``unsigned``; ``now_ms``
    (the caller's clock) gives ``unsigned.age``."""
    now = now_ms
    if redacted_because is not None:
        event = redacted(event)
    out: dict[str, Any] = {
        "content": dict(event.content),
        "event_id": event.event_id,
        "origin_server_ts": event.origin_server_ts,
        "sender": event.sender,
        "type": event.type,
    }
    if include_room_id:
        out["room_id"] = event.room_id
    if event.state_key is not None:
        out["state_key"] = event.state_key
    if event.type == "m.room.redaction" and event.redacts is not None:
        out["redacts"] = event.redacts
    unsigned: dict[str, Any] = {"age": max(0, now - event.origin_server_ts)}
    if transaction_id is not None:
        unsigned["transaction_id"] = transaction_id
    if prev_content is not None:
        unsigned["prev_content"] = prev_content
    if redacted_because is not None:
        unsigned["redacted_because"] = client_event(
            redacted_because, now_ms=now, include_room_id=include_room_id
        )
    out["unsigned"] = unsigned
    return out


def stripped_state(events: Iterable[Event]) -> list[dict[str, Any]]:
    return [
        {"content": dict(e.content), "sender": e.sender, "state_key": e.state_key, "type": e.type}
        for e in events
        if e.state_key is not None
    ]


def server_of(user_id: str) -> str:
    return user_id.split(":", 1)[1] if ":" in user_id else ""
