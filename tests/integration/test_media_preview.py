"""URL previews on a real server (both engines), against a small web server on loopback:
Open Graph data of a page (its og:image fetched and kept as media), redirects followed,
an image URL, the IP-range policy (loopback refused unless allowed, also behind a name),
schemes other than http(s) refused, a stalling page bounded by the timeout; and the pure
HTML parsing of hostile pages."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import quote

from aiohttp import web
from PIL import Image

from homeserver.media.preview import parse_html
from tests.clients import client_server, nio_user, raw
from tests.conftest import DatabaseFactory
from tests.servers import free_port

V1 = "/_matrix/client/v1/media"


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (20, 10), (1, 2, 3)).save(buf, format="PNG")
    return buf.getvalue()


PAGE = b"""<!doctype html><html><head><title>  Fallback
 title </title>
<meta property="og:title" content="A &amp; B">
<meta name="description" content="About things">
<meta property="og:image" content="/img.png">
</head><body>hello</body></html>"""


@asynccontextmanager
async def website() -> AsyncIterator[str]:
    async def page(request: web.Request) -> web.Response:
        return web.Response(body=PAGE, content_type="text/html", charset="utf-8")

    async def image(request: web.Request) -> web.Response:
        return web.Response(body=png(), content_type="image/png")

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("/page")

    async def stall(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response(text="late")

    app = web.Application()
    app.add_routes([web.get("/page", page), web.get("/img.png", image), web.get("/redirect", redirect),
                    web.get("/stall", stall)])
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def q(url: str) -> str:
    return f"{V1}/preview_url?url={quote(url, safe='')}"


async def test_previews(db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]) -> None:
    extra = {"media": {"url_preview": {"enabled": True, "timeout": 1.0}}}
    async with website() as site, client_server(db_factory, tmp_path / "a", test_ca, extra) as server, \
            nio_user(server) as alice:
        token = alice.access_token
        status, body = await raw(server, "GET", q(f"{site}/page"), token=token)
        assert status == 200, body
        assert body["og:title"] == "A & B" and body["og:description"] == "About things"
        assert body["og:image"].startswith("mxc://") and body["og:image:type"] == "image/png"
        assert body["matrix:image:size"] == len(png())
        origin, media_id = body["og:image"].removeprefix("mxc://").split("/")
        assert server.services.media is not None
        kept = await server.services.media.get(origin, media_id)
        assert kept is not None and kept.path is not None and kept.path.read_bytes() == png()
        status, again = await raw(server, "GET", q(f"{site}/redirect"), token=token)
        assert status == 200 and again["og:title"] == "A & B"
        status, body = await raw(server, "GET", q(f"{site}/img.png"), token=token)
        assert status == 200 and body["og:image:type"] == "image/png"

        for url, expected in (("ftp://example.org/x", 403), ("file:///etc/passwd", 403), ("", 400)):
            status, body = await raw(server, "GET", q(url), token=token)
            assert status == expected, (url, body)
        status, body = await raw(server, "GET", f"{V1}/preview_url", token=token)
        assert (status, body["errcode"]) == (400, "M_MISSING_PARAM")
        started = time.monotonic()
        status, body = await raw(server, "GET", q(f"{site}/stall"), token=token)
        assert (status, body["errcode"]) == (502, "M_UNKNOWN") and time.monotonic() - started < 5
        status, body = await raw(server, "GET", q(f"{site}/page"))
        assert status == 401

    # The default IP-range policy: loopback refused, as an IP literal and behind a name.
    extra = {"media": {"url_preview": {"enabled": True}}, "federation": {"ip_range_allowlist": []}}
    async with website() as site, client_server(db_factory, tmp_path / "b", test_ca, extra) as server, \
            nio_user(server) as alice:
        for url in (f"{site}/page", site.replace("127.0.0.1", "localhost") + "/page"):
            status, body = await raw(server, "GET", q(url), token=alice.access_token)
            assert (status, body["errcode"]) == (403, "M_FORBIDDEN"), (url, body)


def test_parse_html() -> None:
    og = parse_html(PAGE, "utf-8")
    assert og == {"og:title": "A & B", "og:image": "/img.png", "og:description": "About things"}
    assert parse_html(b"<title>Only a title", None) == {}  # never closed: nothing taken
    assert parse_html(b"<title>T</title>", "no-such-charset") == {"og:title": "T"}
    hostile = b"<meta property='og:x' content='" + b"y" * 100_000 + b"'>" + b"<meta property='og:z'>" * 500
    og = parse_html(hostile, None)
    assert len(og["og:x"]) == 1000 and len(og) <= 100
    assert parse_html(b"\xff\xfe<<<>>>&&&", None) == {}
