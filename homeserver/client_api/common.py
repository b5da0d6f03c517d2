"""Shared pieces of the client-server API: who is asking (access-token authentication),
the CORS middleware, query-parameter parsing, the client event format, and the mapping of
room-service errors to Matrix errors.

Guarantees: every authenticated handler gets a ``Requester`` or the request fails with
M_MISSING_TOKEN / M_UNKNOWN_TOKEN (401); core errors never leak as a 500.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from homeserver.errors import MatrixError
from homeserver.events.event import Event
from homeserver.http import Handler
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


class Authenticator:
    def __init__(self, users: UserStore) -> None:
        self.users = users

    async def requester(self, request: web.Request) -> Requester:
        token = access_token_of(request)
        if token is None:
            if "Authorization" in request.headers:
                raise MatrixError(401, "M_UNKNOWN_TOKEN", "Malformed Authorization header", soft_logout=False)
            raise MatrixError(401, "M_MISSING_TOKEN", "Missing access token")
        owner = await self.users.get_token_owner(token)
        if owner is None:
            raise MatrixError(401, "M_UNKNOWN_TOKEN", "Unknown access token", soft_logout=False)
        return Requester(owner.user_id, owner.device_id)


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
