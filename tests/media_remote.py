"""A foreign media server for the remote-media tests: real HTTPS on loopback (certificate
from the test CA), answering the federation and legacy media paths with whatever the test
sets in ``media`` and ``mode`` (old server, hostile server, staller), and counting what it
receives: requests per path, and the requests in progress at once (``peak``)."""

from __future__ import annotations

import asyncio
import ssl
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from aiohttp import web

from homeserver.crypto.tls import issue_certificate
from homeserver.media.multipart import content_type_header, encode_head, encode_redirect, encode_tail
from tests.servers import free_port


class MediaRemote:
    def __init__(self, ca: tuple[Path, Path], directory: Path) -> None:
        self.ca = ca
        self.dir = directory
        self.port = free_port()
        self.server_name = f"localhost:{self.port}"
        self.media: dict[str, tuple[str, bytes]] = {}  # media ID -> (content type, bytes)
        self.thumbnails: dict[str, tuple[str, bytes]] = {}  # what the thumbnail paths answer
        # federation: multipart answers; "unrecognized": 404 M_UNRECOGNIZED on the federation
        # path (an old server); "stall": accept and never answer; "redirect": a Location
        # part naming ``location``; "not_multipart": 200 with the bare bytes; "truncated":
        # the multipart answer without its closing delimiter; "broken": a 500.
        # chunked: plain answers without a Content-Length.
        self.mode = "federation"
        self.chunked = False
        self.location = ""
        self.requests: Counter[str] = Counter()  # "federation" / "legacy" / "cdn"
        self.queries: list[dict[str, str]] = []
        self.in_progress = 0
        self.peak = 0
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None

    @property
    def base(self) -> str:
        return f"https://localhost:{self.port}"

    async def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        cert, key = self.dir / "tls.crt", self.dir / "tls.key"
        issue_certificate(cert, key, ["localhost", "127.0.0.1"], self.ca[0], self.ca[1])
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        app = web.Application()
        app.add_routes([
            web.get("/_matrix/federation/v1/media/{kind}/{mediaId}", self._federation),
            web.get("/_matrix/media/v3/{kind}/{server}/{mediaId}", self._legacy),
            web.get("/cdn/{mediaId}", self._cdn),
        ])
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=ctx).start()

    async def stop(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _counted(self, kind: str, request: web.Request) -> None:
        self.requests[kind] += 1
        self.queries.append(dict(request.query))
        if self.mode == "stall":
            self.in_progress += 1
            self.peak = max(self.peak, self.in_progress)
            try:
                await self._release.wait()
            finally:
                self.in_progress -= 1

    async def _federation(self, request: web.Request) -> web.StreamResponse:
        await self._counted("federation", request)
        if self.mode == "unrecognized":
            return web.json_response({"errcode": "M_UNRECOGNIZED", "error": "Unrecognized request"}, status=404)
        store = self.thumbnails if request.match_info["kind"] == "thumbnail" else self.media
        found = store.get(request.match_info["mediaId"])
        if found is None:
            return web.json_response({"errcode": "M_NOT_FOUND", "error": "Not found"}, status=404)
        boundary = "b0undary"
        if self.mode == "broken":
            return web.json_response({"errcode": "M_UNKNOWN", "error": "Internal error"}, status=500)
        if self.mode == "not_multipart":
            return web.Response(body=found[1], content_type=found[0])
        if self.mode == "truncated":
            body = encode_head(boundary, found[0], None) + found[1]
            return web.Response(body=body, headers={"Content-Type": content_type_header(boundary)})
        if self.mode == "redirect":
            return web.Response(body=encode_redirect(boundary, self.location),
                                headers={"Content-Type": content_type_header(boundary)})
        body = encode_head(boundary, found[0], 'inline; filename="remote.png"') + found[1] + encode_tail(boundary)
        return web.Response(body=body, headers={"Content-Type": content_type_header(boundary)})

    async def _legacy(self, request: web.Request) -> web.StreamResponse:
        await self._counted("legacy", request)
        return await self._plain(request)

    async def _cdn(self, request: web.Request) -> web.StreamResponse:
        await self._counted("cdn", request)
        return await self._plain(request)

    async def _plain(self, request: web.Request) -> web.StreamResponse:
        store = self.thumbnails if request.match_info.get("kind") == "thumbnail" else self.media
        found = store.get(request.match_info["mediaId"])
        if found is None:
            return web.json_response({"errcode": "M_NOT_FOUND", "error": "Not found"}, status=404)
        headers = {"Content-Type": found[0], "Content-Disposition": "attachment; filename=old.bin"}
        if not self.chunked:
            return web.Response(body=found[1], headers=headers)
        resp = web.StreamResponse(headers=headers)
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(0, len(found[1]), 1000):
            await resp.write(found[1][i : i + 1000])
        await resp.write_eof()
        return resp


@asynccontextmanager
async def media_remote(ca: tuple[Path, Path], directory: Path) -> AsyncIterator[MediaRemote]:
    remote = MediaRemote(ca, directory)
    await remote.start()
    try:
        yield remote
    finally:
        await remote.stop()
