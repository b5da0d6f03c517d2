"""aiohttp plumbing shared by the client and federation listeners.

Every reply on a Matrix path is JSON; every failure is a Matrix error body with the right
status, never a traceback: the error middleware turns MatrixError, aiohttp's own HTTP
errors and unexpected exceptions into ``{"errcode", "error"}``.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from homeserver.errors import MatrixError
from homeserver.events.canonical import loads_exact_noting_floats, loads_noting_floats
from homeserver.util.clock import SYSTEM_CLOCK, Clock

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


def parse_json_noting_floats(data: bytes, *, exact: bool = False) -> tuple[Any, bool]:
    """``parse_json``, and whether the body held a float (see ``loads_noting_floats``).
    What no canonical JSON can encode (an unpaired surrogate, ``1e400``) is refused with
    M_BAD_JSON (``check_storable``; NUL characters are let through: event content may hold
    them). ``exact``: floats are kept as written (``loads_exact``; for federation bodies,
    whose signatures and PDU hashes cover the floats as the sender wrote them)."""
    value, has_floats = _loads(data, exact)
    check_storable(value, data, has_floats, allow_nul=True)
    return value, has_floats


def _loads(data: bytes, exact: bool = False) -> tuple[Any, bool]:
    try:
        return (loads_exact_noting_floats if exact else loads_noting_floats)(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise MatrixError(400, "M_NOT_JSON", "Content is not valid JSON") from None


async def read_json_object(request: web.Request, max_bytes: int = DEFAULT_MAX_BODY) -> dict[str, Any]:
    """Read a JSON object body (M_NOT_JSON, M_BAD_JSON, M_TOO_LARGE on failure). What no
    database or encoder downstream can hold is refused here with M_BAD_JSON: a NUL
    character or an unpaired surrogate in any string or key, a number beyond a double
    (``1e400``) anywhere (see ``check_storable``)."""
    raw = await read_body(request, max_bytes)
    body, has_floats = _loads(raw)
    check_storable(body, raw, has_floats)
    if not isinstance(body, dict):
        raise MatrixError(400, "M_BAD_JSON", "Request body must be a JSON object")
    return body


# ---------------------------------------------------------------------- storable values

# An unpaired UTF-16 surrogate: JSON's "\ud800" parses to one; UTF-8 (hence every
# database, the canonical JSON encoder and the event hashes) cannot encode it.
_SURROGATE = re.compile("[\ud800-\udfff]")
# The escapes that give a parsed string a surrogate, or (also) a NUL character.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_RISKY_ESCAPES = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")


def _no_surrogate(text: str) -> bool:
    return _SURROGATE.search(text) is None


def is_storable_text(text: str) -> bool:
    """No NUL character (PostgreSQL's text refuses it) and no unpaired surrogate."""
    return "\x00" not in text and _SURROGATE.search(text) is None


def check_storable(
    value: Any, raw: bytes | None = None, has_floats: bool = True, *, allow_nul: bool = False
) -> None:
    """Raise 400 M_BAD_JSON if ``value`` (parsed JSON) holds a string or key that is not
    ``is_storable_text`` (with ``allow_nul``: that holds an unpaired surrogate) or a number
    that is not finite. With ``raw``, the text it was parsed from, the walk is skipped when
    the text cannot hold either: NUL and surrogates reach a parsed string only through a
    ``\\u0000`` or ``\\uD800``-``\\uDFFF`` escape (raw control characters are not JSON;
    encoded surrogates are not UTF-8), an infinity only through a float literal."""
    escapes = _SURROGATE_ESCAPE if allow_nul else _RISKY_ESCAPES
    if raw is not None and not has_floats and escapes.search(raw) is None:
        return
    ok = _no_surrogate if allow_nul else is_storable_text
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not ok(item):
                raise MatrixError(400, "M_BAD_JSON", "Strings may not hold NUL characters or unpaired surrogates")
        elif isinstance(item, dict):
            for key, sub in item.items():
                if isinstance(key, str) and not ok(key):
                    raise MatrixError(400, "M_BAD_JSON", "Keys may not hold NUL characters or unpaired surrogates")
                stack.append(sub)
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, float) and not math.isfinite(item):
            raise MatrixError(400, "M_BAD_JSON", "Numbers must be finite")


# ---------------------------------------------------------------------- malformed HTTP

# Requests aiohttp's parser refuses are logged at most once per this many seconds (with a
# count of those left out): an oversized URL or header costs the sender one request line,
# not the operator one log line each.
PARSE_ERROR_LOG_INTERVAL_SECONDS = 60.0


class _ParseErrorLog:
    """One INFO line per interval for requests the HTTP parser refused."""

    def __init__(self, clock: Clock, interval: float = PARSE_ERROR_LOG_INTERVAL_SECONDS) -> None:
        self._clock = clock
        self._interval = interval
        self._last: float | None = None
        self._suppressed = 0

    def note(self, status: int, reason: str, remote: str | None) -> None:
        now = self._clock.monotonic()
        if self._last is not None and now - self._last < self._interval:
            self._suppressed += 1
            return
        log.info(
            "malformed HTTP request refused",
            extra={"status": status, "reason": reason[:200], "remote": remote, "suppressed": self._suppressed},
        )
        self._last = now
        self._suppressed = 0


def parse_error_reply(exc: BaseException | None, status: int) -> MatrixError:
    """The Matrix error for a request aiohttp's HTTP parser refused: 414 for a request line
    (the URL) over ``max_line_size``, 431 for a header over ``max_field_size`` or too many
    headers, 400 for anything else malformed. The offending bytes are never echoed."""
    if isinstance(exc, LineTooLong):
        head = exc.args[0] if exc.args else b""
        head = head.encode("latin-1", "replace") if isinstance(head, str) else bytes(head)
        # The C parser reports the URL itself, the Python parser the whole request line.
        if head.startswith((b"/", b"http:", b"https:")) or re.match(rb"[A-Z]+ ", head):
            return MatrixError(414, "M_TOO_LARGE", "Request URL too long")
        return MatrixError(431, "M_TOO_LARGE", "Request header too large")
    if isinstance(exc, BadHttpMessage) and "Too many headers" in str(exc):
        return MatrixError(431, "M_TOO_LARGE", "Too many request headers")
    if status >= 500:
        return MatrixError(status, "M_UNKNOWN", "Internal server error")
    return MatrixError(status if 400 <= status < 500 else 400, "M_UNKNOWN", "Malformed HTTP request")


class _MatrixRequestHandler(RequestHandler):
    """aiohttp's connection handler, except that a request its parser refuses (or a
    failure outside the application's middlewares) is answered with a Matrix error body,
    and a refused request is logged rate-limited, without a traceback."""

    __slots__ = ()

    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500 or exc is None or not isinstance(exc, HttpProcessingError):
            # Not the client's fault: aiohttp's own logging (a traceback) stays.
            self.log_exception("Error handling request", exc_info=exc)
        else:
            manager = self._manager
            note = getattr(manager, "parse_errors", None)
            if isinstance(note, _ParseErrorLog):
                note.note(status, str(exc), request.remote)
        if request.writer.output_size > 0:
            raise ConnectionError("Response is sent already, cannot send another response with the error message")
        err = parse_error_reply(exc, status)
        resp = json_response(err.to_json(), err.status)
        resp.force_close()
        return resp


class _MatrixServer(web.Server):
    """aiohttp's protocol factory, making ``_MatrixRequestHandler`` connections."""

    parse_errors: _ParseErrorLog

    def __call__(self) -> RequestHandler:
        return _MatrixRequestHandler(self, loop=self._loop, **self._kwargs)


class MatrixAppRunner(web.AppRunner):
    """``web.AppRunner`` whose connections answer malformed requests (a URL over 8 KB, an
    oversized header) with a JSON Matrix error: see ``_MatrixRequestHandler``."""

    def __init__(self, app: web.Application, *, clock: Clock = SYSTEM_CLOCK, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._parse_errors = _ParseErrorLog(clock)

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # The application's own factory, given our connection class (same state, one
        # method more): aiohttp builds the server inside the application.
        server.__class__ = _MatrixServer
        assert isinstance(server, _MatrixServer)
        server.parse_errors = self._parse_errors
        return server
