"""aiohttp plumbing shared by the client and federation listeners.

Every reply on a Matrix path is JSON; every failure is a Matrix error body with the right
status, never a traceback: the error middleware turns MatrixError, aiohttp's own HTTP
errors and unexpected exceptions into ``{"errcode", "error"}``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from homeserver.errors import MatrixError
from homeserver.events.canonical import loads_noting_floats

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

DEFAULT_MAX_BODY = 1024 * 1024


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8"),
        status=status,
        content_type="application/json",
        headers={"Cache-Control": "no-cache"},
    )


def error_response(err: MatrixError) -> web.Response:
    return json_response(err.to_json(), err.status)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except MatrixError as e:
        return error_response(e)
    except web.HTTPException as e:
        if e.status == 404:
            return error_response(MatrixError(404, "M_UNRECOGNIZED", "Unrecognized request"))
        if e.status == 405:
            return error_response(MatrixError(405, "M_UNRECOGNIZED", "Method not allowed"))
        if e.status == 413:
            return error_response(MatrixError(413, "M_TOO_LARGE", "Request body too large"))
        if e.status < 400:
            raise
        return error_response(MatrixError(e.status, "M_UNKNOWN", e.reason or "error"))
    except Exception as e:
        if isinstance(e, ConnectionResetError) and request.transport is None:
            # The client went away mid-request (or a listener limit closed the connection):
            # nobody to answer, and nothing to log once per connection.
            return error_response(MatrixError(400, "M_UNKNOWN", "Connection lost"))
        log.exception("unhandled error", extra={"path": request.path, "method": request.method})
        return error_response(MatrixError(500, "M_UNKNOWN", "Internal server error"))


async def read_body(request: web.Request, max_bytes: int = DEFAULT_MAX_BODY) -> bytes:
    """Read the request body, refusing more than ``max_bytes`` with M_TOO_LARGE."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise MatrixError(413, "M_TOO_LARGE", f"Request body exceeds {max_bytes} bytes")
    # read(n) returns what has arrived so far (at most n), not n bytes: loop to the end.
    chunks: list[bytes] = []
    total = 0
    while chunk := await request.content.read(max_bytes + 1 - total):
        chunks.append(chunk)
        total += len(chunk)
        if total > max_bytes:
            raise MatrixError(413, "M_TOO_LARGE", f"Request body exceeds {max_bytes} bytes")
    return b"".join(chunks)


def parse_json(data: bytes) -> Any:
    """Parse a JSON body; M_NOT_JSON when it is not JSON at all."""
    return parse_json_noting_floats(data)[0]


def parse_json_noting_floats(data: bytes) -> tuple[Any, bool]:
    """``parse_json``, and whether the body held a float (see ``loads_noting_floats``)."""
    try:
        return loads_noting_floats(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise MatrixError(400, "M_NOT_JSON", "Content is not valid JSON") from None


async def read_json_object(request: web.Request, max_bytes: int = DEFAULT_MAX_BODY) -> dict[str, Any]:
    """Read a JSON object body (M_NOT_JSON, M_BAD_JSON, M_TOO_LARGE on failure)."""
    body = parse_json(await read_body(request, max_bytes))
    if not isinstance(body, dict):
        raise MatrixError(400, "M_BAD_JSON", "Request body must be a JSON object")
    return body
