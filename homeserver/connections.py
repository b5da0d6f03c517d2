"""The connections of a listener: a cap, timeouts, a header size limit, and quiet failures.

Each listener (client, federation, metrics) serves aiohttp's low-level server through a
``ConnectionGuard``. Every accepted connection is a ``_Guarded`` protocol that sees its
bytes before aiohttp does (aiohttp's protocol is only made once the first request's headers
are complete: a connection that never sends them costs little), and the guard wraps the
server's request handler, so it knows when a request starts and ends. A connection is in
one of three phases:

- *head*: no request being handled. A fresh connection has ``header_timeout`` seconds to
  deliver its request line and headers; between requests it may stay idle for
  ``keepalive_timeout`` seconds, and once the next request's first byte arrives its headers
  are due within ``header_timeout``. The deadline is never pushed back by trickled bytes
  (slowloris). Request line and headers together may not exceed ``max_header_bytes``
  (431). A connection in this phase may be evicted to make room for a new one.
- *request*: the handler runs. The body must have arrived ``body_timeout`` seconds after
  the handler started (408; a media upload's may take longer: slow_bodies.py); after that
  the handler's time is its own (a /sync long-poll).
- *drain*: the handler answered without reading the whole body: aiohttp lingers briefly
  so that the client can read the answer, then the connection is closed (never reused).

At ``max_connections`` a new connection evicts the oldest one in the head phase (an idle
keep-alive connection or a slow sender); when every connection is busy with a request, the
new one is closed at once. Which connections were closed and why is logged as one summary
line per listener per interval, never a line per connection.

Timers use the event loop's clock, like the sockets and aiohttp's own timeouts.

Also here: raising the open-file limit at start-up, fitting the caps under it, and an
event-loop exception handler and a log filter that report a repeating failure (accept()
out of file descriptors, a malformed request) once per interval with a count.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from homeserver.config import ConnectionLimitsConfig
from homeserver.slow_bodies import Allowance, BodyAllowance
from homeserver.util.clock import SYSTEM_CLOCK, Clock

try:  # POSIX only
    import resource
except ImportError:  # pragma: no cover
    resource = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

_END_OF_HEAD = b"\r\n\r\n"
_HEAD, _REQUEST, _DRAIN = 0, 1, 2

# Connections waiting in the kernel's accept queue. asyncio also accepts up to this many in
# one turn of the event loop, before the guard sees any of them: a listener holds at most
# max_connections + BACKLOG sockets for a moment, and one turn stays short.
BACKLOG = 128
# aiohttp's own limit on one header line (and on the request line).
_AIOHTTP_MAX_LINE = 8190
# File descriptors kept free for everything but the listeners' connections.
FD_RESERVE = 64
# Connections looked at, oldest first, for one to evict.
_EVICTION_SCAN = 32


def _raw_response(status: int, reason: str, errcode: str, error: str) -> bytes:
    body = json.dumps({"errcode": errcode, "error": error}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


_HEADER_TIMEOUT = _raw_response(408, "Request Timeout", "M_UNKNOWN", "Timed out reading the request headers")
_BODY_TIMEOUT = _raw_response(408, "Request Timeout", "M_UNKNOWN", "Timed out reading the request body")
_HEADERS_TOO_LARGE = _raw_response(
    431, "Request Header Fields Too Large", "M_TOO_LARGE", "Request line and headers are too large"
)


class Throttle:
    """At most one event per key per ``interval`` seconds; counts those held back. Keeps
    at most ``max_keys`` keys (the least recently allowed are forgotten)."""

    def __init__(self, interval: float, clock: Clock = SYSTEM_CLOCK, max_keys: int = 256) -> None:
        self.interval = interval
        self._clock = clock
        self._max_keys = max_keys
        self._last: OrderedDict[Hashable, tuple[float, int]] = OrderedDict()

    def allow(self, key: Hashable) -> int | None:
        """None: hold this one back (counted); else how many were held back since the last
        one allowed."""
        now = self._clock.monotonic()
        entry = self._last.get(key)
        if entry is not None and now - entry[0] < self.interval:
            self._last[key] = (entry[0], entry[1] + 1)
            return None
        self._last[key] = (now, 0)
        self._last.move_to_end(key)
        while len(self._last) > self._max_keys:
            self._last.popitem(last=False)
        return entry[1] if entry is not None else 0


class ConnectionGuard:
    """The connection limits of one listener (see the module docstring)."""

    def __init__(
        self, name: str, limits: ConnectionLimitsConfig, *, max_connections: int | None = None,
        report_interval: float = 60.0, clock: Clock = SYSTEM_CLOCK, slow_body: Allowance | None = None,
    ) -> None:
        self.name = name
        self.slow_body: Allowance = slow_body or (lambda *_: None)  # more time for some bodies (slow_bodies.py)
        self.limits = limits
        self.max_connections = max_connections if max_connections is not None else limits.max_connections
        self._open: dict[asyncio.BaseTransport, _Guarded] = {}
        self._head: OrderedDict[_Guarded, None] = OrderedDict()  # evictable, oldest first
        self._throttle = Throttle(report_interval, clock)
        # Totals since start (tests read them); ``_pending`` holds those not yet reported.
        self.totals: dict[str, int] = dict.fromkeys(_EVENTS, 0)
        self._pending: dict[str, int] = dict.fromkeys(_EVENTS, 0)

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def server_settings(self) -> dict[str, Any]:
        """Keyword arguments for aiohttp's server (``web.AppRunner``)."""
        line = min(_AIOHTTP_MAX_LINE, self.limits.max_header_bytes)
        return {
            "keepalive_timeout": self.limits.keepalive_timeout,
            "max_line_size": line,
            "max_field_size": line,
            "lingering_time": self._lingering_time,
        }

    @property
    def _lingering_time(self) -> float:
        return min(10.0, self.limits.body_timeout)

    def watch_requests(self, server: web.Server) -> None:
        """Wrap ``server``'s request handler so that each connection learns when its
        requests start and end."""
        handler: Callable[[BaseRequest], Awaitable[StreamResponse]] = server.request_handler

        async def guarded(request: BaseRequest) -> StreamResponse:
            conn = self._open.get(request.transport) if request.transport is not None else None
            if conn is None:
                return await handler(request)
            conn.request_started(request)
            response: StreamResponse | None = None
            try:
                response = await handler(request)
                return response
            finally:
                conn.request_finished(request, response)

        server.request_handler = guarded

    def protocol_factory(self, inner: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """The factory to hand to ``loop.create_server``: a ``_Guarded`` per connection,
        which makes its aiohttp protocol with ``inner`` once the first request's headers
        have arrived."""
        loop = asyncio.get_running_loop()

        def make() -> asyncio.Protocol:
            return _Guarded(self, inner, loop)

        return make

    def close_all(self) -> None:
        """Abort every connection still open (the end of a shutdown)."""
        for conn in list(self._open.values()):
            conn.close(abort=True)

    # -- used by _Guarded

    def _admit(self, conn: _Guarded, transport: asyncio.BaseTransport) -> bool:
        if len(self._open) >= self.max_connections:
            victim = self._victim()
            if victim is None:
                self._count("refused")
                return False
            self._count("evicted")
            victim.close(abort=True)
        self._open[transport] = conn
        return True

    def _victim(self) -> _Guarded | None:
        for n, conn in enumerate(self._head):
            if n >= _EVICTION_SCAN:
                break
            if not conn.writing():
                return conn
        return None

    def _forget(self, conn: _Guarded, transport: asyncio.BaseTransport | None) -> None:
        if transport is not None and self._open.get(transport) is conn:
            del self._open[transport]
        self._head.pop(conn, None)

    def _count(self, event: str) -> None:
        self.totals[event] += 1
        self._pending[event] += 1
        if self._throttle.allow(self.name) is None:
            return
        counts = {k: v for k, v in self._pending.items() if v}
        self._pending = dict.fromkeys(_EVENTS, 0)
        level = logging.WARNING if counts.keys() & {"evicted", "refused"} else logging.INFO
        log.log(
            level,
            "connections closed by the listener's limits",
            extra={"listener": self.name, "open": len(self._open), "max_connections": self.max_connections,
                   "interval_seconds": self._throttle.interval, **counts},
        )


_EVENTS = ("evicted", "refused", "header_timeout", "idle_timeout", "body_timeout", "headers_too_large")


class _Guarded(asyncio.Protocol):
    """One connection: aiohttp's protocol, with the guard's limits applied. aiohttp's
    protocol (made by ``make_inner``) is only made once the first request's headers are
    complete, so a connection that never gets that far (idle, slowloris) costs a
    transport and this object, and evicting or timing it out costs little."""

    __slots__ = (
        "_admitted",
        "_body",
        "_body_mark",
        "_body_start",
        "_buffer",
        "_closing",
        "_guard",
        "_handled",
        "_head_bytes",
        "_head_done",
        "_inner",
        "_loop",
        "_make_inner",
        "_phase",
        "_received",
        "_request",
        "_resumes",
        "_tail",
        "_timer",
        "_write_mark",
        "_writing_paused",
        "transport",
    )

    def __init__(
        self, guard: ConnectionGuard, make_inner: Callable[[], asyncio.Protocol], loop: asyncio.AbstractEventLoop
    ) -> None:
        self._guard = guard
        self._make_inner = make_inner
        self._inner: asyncio.Protocol | None = None
        self._buffer: list[bytes] = []  # the first request's bytes until its headers are complete
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self._admitted = False  # the guard counts the connection
        self._closing = False  # closed by us; connection_lost still to come
        self._phase = _HEAD
        self._timer: asyncio.TimerHandle | None = None
        self._handled = 0  # requests whose handler has started
        self._head_bytes = 0
        self._head_done = False
        self._tail = b""
        self._request: BaseRequest | None = None
        self._writing_paused = False
        self._resumes = 0  # times the transport's buffer drained below its low-water mark
        self._write_mark: tuple[int, int] | None = None
        self._received = 0  # bytes received on the connection
        self._body: BodyAllowance | None = None  # the request's body has more time (slow_bodies.py)
        self._body_start, self._body_mark = 0.0, 0  # when the body started; _received at its head's end

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        if not self._guard._admit(self, transport):
            transport.abort()
            return
        self._admitted = True
        self.transport = transport
        self._enter_head(self._guard.limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._admitted:
            return
        self._admitted = False
        transport, self.transport = self.transport, None
        self._cancel_timer()
        self._guard._forget(self, transport)
        self._request = None
        self._buffer = []
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._writing_paused = True
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._resumes += 1
        if self._inner is not None:
            self._inner.resume_writing()

    def eof_received(self) -> bool | None:
        if self._inner is None:
            return None  # the client is done before its first request was: close
        return self._inner.eof_received()

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or self._closing:
            return
        self._received += len(data)
        if self._phase == _HEAD and not self._head_done:
            limits = self._guard.limits
            if self._head_bytes == 0 and self._handled:
                # The first byte of a further request: its headers are due from now.
                self._arm(limits.header_timeout)
            seen = self._tail + data if self._tail else data
            end = seen.find(_END_OF_HEAD)
            if end >= 0:
                self._head_bytes += end + len(_END_OF_HEAD) - len(self._tail)
                self._head_done = True
                self._body_mark = self._received - (len(seen) - end - len(_END_OF_HEAD))  # at the head's end
                self._tail = b""
            else:
                self._head_bytes += len(data)
                self._tail = seen[-3:]
            if self._head_bytes > limits.max_header_bytes:
                self._guard._count("headers_too_large")
                self._fail(_HEADERS_TOO_LARGE, answer=not self._handled)
                return
        inner = self._inner
        if inner is None:
            self._buffer.append(data)
            if not self._head_done:
                return
            inner = self._inner = self._make_inner()
            inner.connection_made(transport)
            if self._writing_paused:
                inner.pause_writing()
            data = b"".join(self._buffer)
            self._buffer = []
        inner.data_received(data)

    # -- phases (called by the guard's request handler)

    def request_started(self, request: BaseRequest) -> None:
        self._phase = _REQUEST
        self._handled += 1
        self._request = request
        self._guard._head.pop(self, None)
        self._body = self._guard.slow_body(request.method, request.path, request.content_length)
        if request.content.is_eof():
            self._cancel_timer()  # nothing more to receive: the handler's time is its own
        elif self._body is not None:
            self._body_start = self._loop.time()
            self._arm(self._body.check_every)
        else:
            self._arm(self._guard.limits.body_timeout)

    def request_finished(self, request: BaseRequest, response: StreamResponse | None) -> None:
        self._request = None
        if self.transport is None or self._closing:
            return
        if not request.content.is_eof():
            # Answered before the whole body arrived: aiohttp lingers so that the client can
            # read the answer, then closes; the connection is not used again.
            if response is not None:
                response.force_close()
            self._phase = _DRAIN
            self._arm(self._guard._lingering_time + 1.0)
            return
        self._enter_head(self._guard.limits.keepalive_timeout)

    def writing(self) -> bool:
        """Whether an answer is still on its way out (not to be evicted then)."""
        t = self.transport
        return self._writing_paused or (t is not None and t.get_write_buffer_size() > 0)

    def close(self, *, abort: bool) -> None:
        """Close now (``abort``: without flushing); the guard forgets the connection at once
        (its file descriptor is released within a turn of the loop)."""
        transport = self.transport
        if transport is None or self._closing:
            return
        self._closing = True
        self._cancel_timer()
        self._guard._forget(self, transport)
        if abort:
            transport.abort()
        else:
            transport.close()

    # -- internals

    def _enter_head(self, timeout: float) -> None:
        self._phase = _HEAD
        self._head_bytes = 0
        self._head_done = False
        self._tail = b""
        self._guard._head[self] = None
        self._guard._head.move_to_end(self)
        self._arm(timeout)

    def _arm(self, seconds: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(seconds, self._expire)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        transport = self.transport
        if transport is None or self._closing:
            return
        limits = self._guard.limits
        if self._phase == _REQUEST:
            request = self._request
            if request is None or request.content.is_eof():
                return
            body, elapsed = self._body, self._loop.time() - self._body_start
            if body is not None and body.keeps_up(elapsed, self._received - self._body_mark):
                self._arm(body.check_every)
                return
            self._guard._count("body_timeout")
            self._fail(_BODY_TIMEOUT, answer=request.writer.output_size == 0)
            return
        if self.writing():
            # An answer is still on its way out: more time as long as the client takes some
            # of it (a slow reader of a large /sync), none for one that takes nothing.
            mark = (transport.get_write_buffer_size(), self._resumes)
            if mark != self._write_mark:
                self._write_mark = mark
                self._arm(limits.header_timeout)
                return
        if self._phase == _HEAD:
            if self._head_bytes:
                self._guard._count("header_timeout")
                self._fail(_HEADER_TIMEOUT, answer=not self._handled)
                return
            self._guard._count("idle_timeout")
        self.close(abort=True)

    def _fail(self, response: bytes, *, answer: bool) -> None:
        """Close the connection, first answering ``response`` when nothing else has been
        sent on it (else a half-written answer could get a second one)."""
        transport = self.transport
        if transport is None or self._closing:
            return
        if answer and not transport.is_closing() and not self.writing():
            transport.write(response)
            self.close(abort=False)
        else:
            self.close(abort=True)


# ---------------------------------------------------------------------- file descriptors


@dataclass(frozen=True, slots=True)
class FdLimit:
    """The soft limit on open files before and after ``raise_fd_limit``, the hard limit,
    and why it could not be raised (None: it was raised, or did not need to be)."""

    before: int
    now: int
    hard: int
    error: str | None = None

    def log(self) -> None:
        """Log it: INFO when raised, WARNING when it could not be, DEBUG otherwise."""
        extra = {"from": self.before, "to": self.now, "hard": self.hard}
        if self.error is not None:
            log.warning("could not raise the open-file limit", extra={**extra, "error": self.error})
        elif self.now > self.before:
            log.info("raised the open-file limit", extra=extra)
        else:
            log.debug("open-file limit", extra=extra)


def raise_fd_limit() -> FdLimit:
    """Raise the soft limit on open files to the hard limit (logs nothing: a server that
    fails to start reports that alone; ``FdLimit.log`` once started)."""
    if resource is None:  # pragma: no cover
        return FdLimit(0, 0, 0, "no resource module")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    unlimited = resource.RLIM_INFINITY
    if soft == unlimited:
        return FdLimit(soft, soft, hard)
    target = hard if hard != unlimited else max(soft, 1 << 16)
    if soft >= target:
        return FdLimit(soft, soft, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as e:
        return FdLimit(soft, soft, hard, str(e))
    return FdLimit(soft, target, hard)


def fd_limit() -> int:
    """The soft limit on open files now (a large number when unlimited or unknown)."""
    if resource is None:  # pragma: no cover
        return 1 << 30
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 1 << 30 if soft == resource.RLIM_INFINITY else int(soft)


def fit_caps(wanted: dict[str, int], reserve: int, limit: int | None = None) -> dict[str, int]:
    """The listeners' connection caps, scaled down together when they and ``reserve`` (the
    file descriptors everything else may use) do not fit under ``limit`` (default: the
    soft limit on open files). A cap the process cannot reach turns a flood into
    accept() failures (EMFILE) that stall every listener, so a lower cap is better."""
    limit = fd_limit() if limit is None else limit
    total = sum(wanted.values())
    room = limit - reserve
    if total <= room:
        return dict(wanted)
    room = max(room, len(wanted))
    fitted = {name: max(1, cap * room // total) for name, cap in wanted.items()}
    log.warning(
        "listener connection caps lowered to fit the open-file limit",
        extra={"open_file_limit": limit, "reserve": reserve, **{f"{n}_max_connections": c for n, c in fitted.items()}},
    )
    return fitted


# ---------------------------------------------------------------------- quiet failures

_ADDRESS = re.compile(r"0x[0-9a-fA-F]+|\d+")


class QuietLoopErrors:
    """An event-loop exception handler: asyncio's own, but each kind of failure (message
    and exception type) is logged at most once per ``interval`` seconds, with the number
    of those not logged. Without it, accept() failing with EMFILE logs a traceback per
    listener per second for as long as the flood lasts."""

    def __init__(self, interval: float = 60.0, clock: Clock = SYSTEM_CLOCK) -> None:
        self._throttle = Throttle(interval, clock)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        message = str(context.get("message") or "")
        key = (_ADDRESS.sub("", message)[:120], type(exc).__name__, getattr(exc, "errno", None))
        held = self._throttle.allow(key)
        if held is None:
            return
        if held:
            context = {**context, "message": f"{message} ({held} more like it in the last "
                                             f"{self._throttle.interval:g}s not logged)"}
        loop.default_exception_handler(context)


class QuietRepeats(logging.Filter):
    """A log filter letting through each kind of record (logger, message template,
    exception type) at most once per ``interval`` seconds; the record let through carries
    ``suppressed``, the number held back before it."""

    def __init__(self, interval: float = 60.0, clock: Clock = SYSTEM_CLOCK) -> None:
        super().__init__()
        self._throttle = Throttle(interval, clock)

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        held = self._throttle.allow((record.name, str(record.msg)[:120], type(exc).__name__))
        if held is None:
            return False
        if held:
            record.suppressed = held
        return True


def quiet_connection_noise(loop: asyncio.AbstractEventLoop, interval: float = 60.0) -> None:
    """Install ``QuietLoopErrors`` on ``loop`` and ``QuietRepeats`` on aiohttp's server
    logger (a traceback per malformed request otherwise). For a process of its own."""
    loop.set_exception_handler(QuietLoopErrors(interval))
    logging.getLogger("aiohttp.server").addFilter(QuietRepeats(interval))
