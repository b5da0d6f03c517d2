"""The client listener's connection limits (issue 17, finding 7), on a real server on
loopback with raw sockets, on both engines: idle connections are evicted at the cap and
busy ones make it refuse; slow headers and slow bodies time out with a JSON 408; oversized
headers get a JSON 431; idle keep-alive connections are closed; a client that leaves in
the middle of its body is not logged as an error; on the TLS federation listener, a
connection that never completes its handshake, or never sends a request after it, is
closed after the header timeout."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from homeserver.server import RunningServer
from tests.clients import nio_user
from tests.conftest import DatabaseFactory
from tests.servers import make_config, running_server

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@asynccontextmanager
async def limited_server(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path], **limits: Any
) -> AsyncIterator[RunningServer]:
    settings = await db_factory.new_settings()
    config = make_config(tmp_path / "hs", settings, test_ca, extra={
        "listeners": {"client": {"bind": "127.0.0.1", "port": 0, **limits}},
    })
    async with running_server(config) as server:
        yield server


async def connect(server: RunningServer) -> Conn:
    return await asyncio.open_connection("127.0.0.1", server.client_port)


async def read_to_end(conn: Conn, timeout: float = 5.0) -> bytes:
    """Everything the server sends until it closes (a reset counts as a close)."""
    reader, writer = conn
    try:
        return await asyncio.wait_for(reader.read(), timeout)
    except ConnectionResetError:
        return b""
    finally:
        writer.close()


def json_body(reply: bytes) -> Any:
    return json.loads(reply.split(b"\r\n\r\n", 1)[1])


async def health(server: RunningServer) -> bytes:
    conn = await connect(server)
    conn[1].write(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    return await read_to_end(conn)


async def until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_idle_connections_are_evicted_at_the_cap(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    async with limited_server(db_factory, tmp_path, test_ca, max_connections=3) as server:
        guard = server.guards["client"]
        idle = [await connect(server) for _ in range(3)]
        await until(lambda: guard.open_connections == 3)
        # A fourth connection gets in: the oldest idle one makes room.
        reply = await health(server)
        assert reply.startswith(b"HTTP/1.1 200")
        assert await read_to_end(idle[0], timeout=2.0) == b""
        assert guard.totals["evicted"] == 1
        assert guard.open_connections <= 3
        for _, w in idle:
            w.close()


async def test_busy_connections_refuse_a_new_one_and_slow_bodies_time_out(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    async with limited_server(db_factory, tmp_path, test_ca, max_connections=2, body_timeout=1.0) as server:
        guard = server.guards["client"]
        busy = [await connect(server) for _ in range(2)]
        started = time.monotonic()
        for _, w in busy:  # headers complete, body promised but only begun
            w.write(b"POST /_matrix/client/v3/login HTTP/1.1\r\nHost: localhost\r\n"
                    b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"type\":")
        await until(lambda: guard.open_connections == 2 and not guard._head)
        # Every connection is handling a request: a new one is closed at once.
        refused = await connect(server)
        assert await read_to_end(refused, timeout=1.0) == b""
        assert guard.totals["refused"] == 1
        for conn in busy:
            reply = await read_to_end(conn)
            assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
            assert json_body(reply)["errcode"] == "M_UNKNOWN"
        assert time.monotonic() - started >= 0.9
        assert guard.totals["body_timeout"] == 2
        assert (await health(server)).startswith(b"HTTP/1.1 200")


async def test_slow_headers_time_out_and_large_headers_are_refused(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    async with limited_server(db_factory, tmp_path, test_ca, header_timeout=1.0, max_header_bytes=4096) as server:
        guard = server.guards["client"]
        started = time.monotonic()
        slow, silent, large = await connect(server), await connect(server), await connect(server)
        slow[1].write(b"GET /health HTTP/1.1\r\nHost: localhost\r\n")
        large[1].write(b"GET /health HTTP/1.1\r\nHost: localhost\r\n" + b"X-Pad: " + b"a" * 1000 + b"\r\n")
        for _ in range(4):
            large[1].write(b"X-Pad: " + b"a" * 1000 + b"\r\n")
        reply = await read_to_end(large, timeout=1.0)
        assert reply.startswith(b"HTTP/1.1 431"), reply[:200]
        assert json_body(reply)["errcode"] == "M_TOO_LARGE"

        async def trickle() -> None:  # a byte now and then does not push the deadline back
            for _ in range(20):
                await asyncio.sleep(0.2)
                slow[1].write(b"X")

        trickler = asyncio.create_task(trickle())
        reply = await read_to_end(slow)
        elapsed = time.monotonic() - started
        trickler.cancel()
        await asyncio.gather(trickler, return_exceptions=True)
        assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
        assert json_body(reply)["errcode"] == "M_UNKNOWN"
        assert 0.9 <= elapsed < 2.5
        assert await read_to_end(silent) == b""  # sent nothing: closed without a word
        assert guard.totals == {**guard.totals, "header_timeout": 1, "headers_too_large": 1}
        assert guard.open_connections == 0


async def test_keep_alive_connections_serve_requests_then_close_when_idle(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    async with limited_server(db_factory, tmp_path, test_ca, keepalive_timeout=1.0) as server:
        reader, writer = await connect(server)
        for _ in range(2):
            writer.write(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            await reader.readexactly(length)
        started = time.monotonic()
        assert await read_to_end((reader, writer)) == b""
        assert 0.8 <= time.monotonic() - started < 2.5


async def test_a_client_leaving_mid_body_is_not_an_error(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    async with limited_server(db_factory, tmp_path, test_ca) as server:
        with caplog.at_level(logging.ERROR):
            for _ in range(5):
                _, writer = await connect(server)
                writer.write(b"POST /_matrix/client/v3/login HTTP/1.1\r\nHost: localhost\r\n"
                             b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"type\":")
                await writer.drain()
                await asyncio.sleep(0.1)
                writer.transport.abort()
                writer.close()
            await asyncio.sleep(0.3)
            assert (await health(server)).startswith(b"HTTP/1.1 200")
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert errors == [], [r.getMessage() for r in errors]


async def test_tls_connections_are_bounded_before_and_after_the_handshake(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    settings = await db_factory.new_settings()
    config = make_config(tmp_path / "hs", settings, test_ca)
    fed = dataclasses.replace(config.listeners.federation, header_timeout=1.0)
    config = dataclasses.replace(config, listeners=dataclasses.replace(config.listeners, federation=fed))
    async with running_server(config) as server:
        guard = server.guards["federation"]
        started = time.monotonic()
        # No TLS handshake at all: closed by the handshake timeout (the header timeout).
        plain = await asyncio.open_connection("127.0.0.1", server.federation_port)
        # A handshake, then nothing: closed by the header timeout.
        ctx = ssl.create_default_context(cafile=str(test_ca[0]))
        tls = await asyncio.open_connection("127.0.0.1", server.federation_port, ssl=ctx,
                                            server_hostname="localhost")
        await until(lambda: guard.open_connections == 1)
        for conn in (plain, tls):
            try:
                reply = await read_to_end(conn)
            except (ssl.SSLError, ConnectionError):
                reply = b""
            assert reply == b""
        assert 0.9 <= time.monotonic() - started < 3.0
        assert guard.totals["idle_timeout"] == 1
        assert guard.open_connections == 0


async def test_a_slow_but_steady_upload_gets_more_time_and_a_stalled_one_is_cut(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    """body_timeout 1 s; media.min_upload_rate 8 KiB/s. A 40 KiB upload sent at ~16 KiB/s
    (2.5 s) succeeds; one that sends 4 KiB and stops is cut (408) once it falls behind the
    rate, long before the 6 s its size would allow; a login body is still cut at 1 s."""
    settings = await db_factory.new_settings()
    config = make_config(tmp_path / "hs", settings, test_ca, extra={
        "listeners": {"client": {"bind": "127.0.0.1", "port": 0, "body_timeout": 1.0}},
        "media": {"min_upload_rate": 8192},
    })
    async with running_server(config) as server, nio_user(server, "uploader") as user:
        guard = server.guards["client"]
        size = 40 * 1024
        head = (f"POST /_matrix/media/v3/upload HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                f"Authorization: Bearer {user.access_token}\r\nContent-Type: application/octet-stream\r\n"
                f"Content-Length: {size}\r\n\r\n").encode()

        async def steady() -> bytes:
            conn = await connect(server)
            conn[1].write(head)
            for _ in range(size // 1024):
                conn[1].write(b"x" * 1024)
                await conn[1].drain()
                await asyncio.sleep(1 / 16)
            return await read_to_end(conn)

        async def stalled() -> tuple[bytes, float]:
            conn = await connect(server)
            started = time.monotonic()
            conn[1].write(head + b"y" * 4096)
            reply = await read_to_end(conn, timeout=10.0)
            return reply, time.monotonic() - started

        started = time.monotonic()
        ok, (cut, cut_after) = await asyncio.gather(steady(), stalled())
        assert time.monotonic() - started > 2.0  # well over the old limit of body_timeout
        assert ok.startswith(b"HTTP/1.1 200"), ok[:300]
        assert json_body(ok)["content_uri"].startswith("mxc://")
        assert cut.startswith(b"HTTP/1.1 408"), cut[:300]
        assert 1.4 < cut_after < 4.0
        assert guard.totals["body_timeout"] == 1
        # Any other request keeps body_timeout.
        conn = await connect(server)
        started = time.monotonic()
        conn[1].write(b"POST /_matrix/client/v3/login HTTP/1.1\r\nHost: localhost\r\n"
                      b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"type\":")
        assert (await read_to_end(conn)).startswith(b"HTTP/1.1 408")
        assert 0.9 < time.monotonic() - started < 2.0
