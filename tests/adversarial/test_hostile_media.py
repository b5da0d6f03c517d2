"""Hostile input to the media repository through the client API, on both engines (helper
hostile1).

- Numbers in the query: ``str.isdigit`` accepts "²" and "١٢", and ``int`` refuses strings of
  more than 4300 digits; both used to reach ``int`` and answer 500. Now 400 M_INVALID_PARAM.
- File names with path separators, quotes, CR/LF or a right-to-left override are offered
  sanitised; HTML uploaded as image/png is served with nosniff and a sandboxing CSP; SVG is
  never inline; an async upload cannot be completed by another user, nor twice.
- An animated GIF of 200 large, nearly identical frames is a few KB, and an animated
  thumbnail decoded and resized every frame: 25 s of CPU for a 13 KB file (3000x3000), with
  one of the two thumbnail workers held. The frames animated are now bounded by
  ``max_thumbnail_source_pixels`` in all.
- Pillow guesses the format from the bytes: a TIFF (or PSD, EPS...) uploaded as image/png
  reached that decoder. Only the JPEG, PNG, GIF, WebP and BMP decoders are used now.
- URL previews parsed pages with html.parser, which is quadratic on malformed markup in this
  Python: a 64 KB page of ``<a b="`` took 7 s, a 1 MB one about half an hour, on the event
  loop (every request of every user stalled). Pages are now read with linear regexes.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator, Iterator
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web
from PIL import Image

from homeserver.media.preview import parse_html
from homeserver.server import RunningServer
from tests.clients import base_url, client_server, nio_user, raw
from tests.conftest import DatabaseFactory
from tests.servers import free_port

M = "/_matrix/client/v1/media"
UPLOAD = "/_matrix/media/v3/upload"


@pytest.fixture
async def server(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> AsyncIterator[RunningServer]:
    async with client_server(db_factory, tmp_path / "a", test_ca) as s:
        yield s


async def upload(server: RunningServer, token: str, data: bytes, content_type: str,
                 filename: str | None = None) -> str:
    params = {"filename": filename} if filename is not None else {}
    async with aiohttp.ClientSession() as s, s.post(
        base_url(server) + UPLOAD, data=data, params=params,
        headers={"Authorization": f"Bearer {token}", "Content-Type": content_type},
    ) as r:
        body: dict[str, Any] = await r.json()
        assert r.status == 200, body
        uri: str = body["content_uri"]
        return uri.removeprefix("mxc://")


async def get(server: RunningServer, token: str, path: str) -> tuple[int, bytes, dict[str, str]]:
    async with aiohttp.ClientSession() as s, s.get(
        base_url(server) + path, headers={"Authorization": f"Bearer {token}"}
    ) as r:
        return r.status, await r.read(), dict(r.headers)


async def test_odd_numbers_in_the_query_are_400(server: RunningServer) -> None:
    async with nio_user(server) as alice:
        token = alice.access_token
        ref = await upload(server, token, b"hello", "text/plain")
        for value in ("²", "١٢", "1" * 5000, "-1", "1.5", ""):
            for path in (f"{M}/thumbnail/{ref}?width={value}&height=32", f"{M}/thumbnail/{ref}?width=32&height={value}",
                         f"{M}/download/{ref}?timeout_ms={value}"):
                if path.endswith("timeout_ms="):
                    continue  # empty: the default wait
                status, body = await raw(server, "GET", path, token=token)
                assert status == 400 and body["errcode"] == "M_INVALID_PARAM", (path[:80], status, body)


async def test_hostile_names_and_types_are_served_safely(server: RunningServer) -> None:
    async with nio_user(server) as alice, nio_user(server) as bob:
        token = alice.access_token
        html = b"<html><script>alert(1)</script></html>"
        for name, offered in (("../../etc/passwd", 'filename="passwd"'), ('a"b.txt', 'filename="a\\"b.txt"'),
                              ("a\r\nb", 'filename="ab"'), ("\u202egnp.exe", 'filename="gnp.exe"'),
                              ("a/b\\c", 'filename="c"')):
            ref = await upload(server, token, html, "image/png", name)
            status, data, headers = await get(server, token, f"{M}/download/{ref}")
            assert status == 200 and data == html
            assert headers["Content-Disposition"] == f"inline; {offered}", (name, headers["Content-Disposition"])
            assert headers["Content-Type"] == "image/png" and headers["X-Content-Type-Options"] == "nosniff"
            assert "sandbox" in headers["Content-Security-Policy"]
            status, _, headers = await get(server, token, f"{M}/download/{ref}/evil%0d%0aX-A:1.html")
            assert status == 200 and headers["Content-Disposition"] == 'inline; filename="evilX-A:1.html"'
            assert "X-A" not in headers
        for ct in ("image/svg+xml", "text/html"):
            ref = await upload(server, token, b"<svg><script>alert(1)</script></svg>", ct)
            status, _, headers = await get(server, token, f"{M}/download/{ref}")
            assert status == 200 and headers["Content-Disposition"] == "attachment"
            status, body = await raw(server, "GET", f"{M}/thumbnail/{ref}?width=32&height=32", token=token)
            assert status == 400 and body["errcode"] == "M_UNKNOWN"

        status, created = await raw(server, "POST", "/_matrix/media/v1/create", token=token)
        assert status == 200
        ref = created["content_uri"].removeprefix("mxc://")
        status, body = await raw(server, "PUT", f"/_matrix/media/v3/upload/{ref}", token=bob.access_token, data=b"x")
        assert status == 403 and body["errcode"] == "M_FORBIDDEN"
        status, _ = await raw(server, "PUT", f"/_matrix/media/v3/upload/{ref}", token=token, data=b"x")
        assert status == 200
        status, body = await raw(server, "PUT", f"/_matrix/media/v3/upload/{ref}", token=token, data=b"y")
        assert status == 409 and body["errcode"] == "M_CANNOT_OVERWRITE_MEDIA"


@cache
def many_frames_gif(side: int = 1500, frames: int = 200) -> bytes:
    def frame(i: int) -> Image.Image:
        im = Image.new("P", (side, side), 0)
        im.putpalette([0, 0, 0, 255, 255, 255])
        im.paste(1, (i * 5, 0, i * 5 + 300, 300))  # frames differ, so the encoders keep them all
        return im

    def rest() -> Iterator[Image.Image]:
        for i in range(1, frames):
            yield frame(i)
    buf = io.BytesIO()
    frame(0).save(buf, "GIF", save_all=True, append_images=rest(), duration=50)
    return buf.getvalue()


async def test_animated_thumbnail_work_is_bounded(server: RunningServer) -> None:
    async with nio_user(server) as alice:
        data = many_frames_gif()
        assert len(data) < 300_000  # small: the cost is in decoding
        ref = await upload(server, alice.access_token, data, "image/gif")
        started = time.monotonic()
        status, body, headers = await get(server, alice.access_token,
                                          f"{M}/thumbnail/{ref}?width=64&height=64&method=scale&animated=true")
        assert status == 200 and headers["Content-Type"] == "image/webp", (status, body[:200])
        assert time.monotonic() - started < 3.0  # was about 6 s (200 frames of 2.25 Mpx)
        with Image.open(io.BytesIO(body)) as thumb:
            assert thumb.n_frames > 1  # still animated, with the frames that fit the budget


MB = 1024 * 1024
HOSTILE_PAGES = [b"<a" * (MB // 2), b'<a b="' * (MB // 6), b"</" * (MB // 2), b"<?" * (MB // 2),
                 b'<meta b="' * (MB // 9), b"<meta" + b" a" * (MB // 2), b"<title" * (MB // 6),
                 b"<meta a=\"<meta a='" * (MB // 20)]


def test_preview_parsing_is_linear() -> None:
    started = time.monotonic()
    for page in HOSTILE_PAGES:
        assert parse_html(page, None) == {}
    assert time.monotonic() - started < 2.0
    page = (b"<html><head><TITLE>a &amp; <b>b</b></title><meta property=og:x content=\"1 > 2\">"
            b"<META NAME=\"Description\" CONTENT='d'/></head>")
    assert parse_html(page, None) == {"og:x": "1 > 2", "og:title": "a & <b>b</b>", "og:description": "d"}


async def test_a_hostile_page_does_not_stall_the_server(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    async def hostile(request: web.Request) -> web.Response:
        return web.Response(body=b'<html><head><a b="' * (MB // 20), content_type="text/html")

    app = web.Application()
    app.router.add_get("/page", hostile)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    extra = {"media": {"url_preview": {"enabled": True, "timeout": 5.0}}}
    try:
        async with client_server(db_factory, tmp_path / "p", test_ca, extra) as server, nio_user(server) as alice:
            url = f"{M}/preview_url?url={quote(f'http://127.0.0.1:{port}/page', safe='')}"
            started = time.monotonic()
            preview = asyncio.ensure_future(raw(server, "GET", url, token=alice.access_token))
            status, body = await raw(server, "GET", "/_matrix/client/versions")
            assert status == 200
            status, body = await preview
            assert status == 200 and body == {}, body
            assert time.monotonic() - started < 3.0
    finally:
        await runner.cleanup()


async def test_only_the_expected_image_decoders_are_used(server: RunningServer) -> None:
    async with nio_user(server) as alice:
        for fmt in ("TIFF", "PPM", "ICO"):
            buf = io.BytesIO()
            Image.new("RGB", (64, 64), (200, 10, 10)).save(buf, fmt)
            ref = await upload(server, alice.access_token, buf.getvalue(), "image/png")
            status, body = await raw(server, "GET", f"{M}/thumbnail/{ref}?width=32&height=32", token=alice.access_token)
            assert status == 400 and body["errcode"] == "M_UNKNOWN", (fmt, status, body)
        buf = io.BytesIO()
        Image.new("RGB", (64, 64), (200, 10, 10)).save(buf, "BMP")
        ref = await upload(server, alice.access_token, buf.getvalue(), "image/png")  # an allowed decoder
        status, _, headers = await get(server, alice.access_token, f"{M}/thumbnail/{ref}?width=32&height=32")
        assert status == 200 and headers["Content-Type"] == "image/png"
