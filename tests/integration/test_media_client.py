"""The content repository through the client-server API of a real server, on both engines:
upload and authenticated download with the security headers, a 96x96 thumbnail, the media
config, the legacy switch, asynchronous uploads, the spec's errors (oversize, bad IDs,
unknown and remote media), uploads cut short or with a wrong length leaving nothing behind,
the per-user upload rate limit, and matrix-nio's upload and download."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
from nio import DownloadResponse, ResizingMethod, ThumbnailResponse, UploadResponse
from PIL import Image

from homeserver.server import RunningServer
from tests.clients import base_url, client_server, eventually, nio_user, raw, server_name
from tests.conftest import DatabaseFactory

V1 = "/_matrix/client/v1/media"
LEGACY = "/_matrix/media/v3"
CSP = ("sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; "
       "style-src 'unsafe-inline'; media-src 'self'; object-src 'self';")


def png(width: int = 400, height: int = 300) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (10, 120, 200)).save(buf, format="PNG")
    return buf.getvalue()


async def upload(
    server: RunningServer, token: str, data: bytes, content_type: str = "image/png", filename: str | None = None
) -> tuple[int, Any]:
    query = "" if filename is None else "?" + urlencode({"filename": filename})
    return await raw(server, "POST", f"{LEGACY}/upload{query}", token=token, data=data,
                     headers={"Content-Type": content_type})


async def get(server: RunningServer, path: str, token: str | None = None) -> tuple[int, dict[str, str], bytes]:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as s, s.get(base_url(server) + path, headers=headers) as r:
        return r.status, dict(r.headers), await r.read()


def media_id_of(uri: str) -> str:
    return uri.rsplit("/", 1)[1]


def stored_files(server: RunningServer) -> list[Path]:
    media = server.services.media
    assert media is not None
    return sorted(p for p in media.files.root.rglob("*") if p.is_file())


async def media_rows(server: RunningServer) -> int:
    return int(await server.services.db.fetchval("SELECT COUNT(*) FROM media"))


async def test_upload_download_thumbnail_and_headers(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    async with client_server(db_factory, tmp_path / "a", test_ca) as server, nio_user(server) as alice:
        token, name = alice.access_token, server_name(server)
        image = png()
        status, body = await upload(server, token, image, "image/png", "holiday photo.png")
        assert status == 200, body
        uri = body["content_uri"]
        assert uri.startswith(f"mxc://{name}/")
        media_id = media_id_of(uri)

        status, headers, data = await get(server, f"{V1}/download/{name}/{media_id}", token)
        assert status == 200 and data == image
        assert headers["Content-Type"] == "image/png"
        assert headers["Content-Disposition"] == 'inline; filename="holiday photo.png"'
        assert headers["Content-Security-Policy"] == CSP
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Cross-Origin-Resource-Policy"] == "cross-origin"
        # The file name in the path wins; unauthenticated is refused.
        status, headers, _ = await get(server, f"{V1}/download/{name}/{media_id}/other.png", token)
        assert status == 200 and headers["Content-Disposition"] == 'inline; filename="other.png"'
        status, _, data = await get(server, f"{V1}/download/{name}/{media_id}")
        assert status == 401

        status, headers, data = await get(
            server, f"{V1}/thumbnail/{name}/{media_id}?width=96&height=96&method=crop", token
        )
        assert status == 200 and headers["Content-Type"] == "image/png"
        assert headers["Content-Security-Policy"] == CSP
        with Image.open(io.BytesIO(data)) as thumb:
            assert thumb.size == (96, 96)
        status, _, data = await get(server, f"{V1}/thumbnail/{name}/{media_id}?width=300&height=200", token)
        with Image.open(io.BytesIO(data)) as thumb:
            assert status == 200 and thumb.size == (320, 240)

        status, body = await raw(server, "GET", f"{V1}/config", token=token)
        assert (status, body) == (200, {"m.upload.size": 50 * 1024 * 1024})

        # SVG and HTML are attachments; a non-ASCII name is RFC 5987-encoded; a path is cut.
        status, body = await upload(server, token, b"<svg xmlns='http://www.w3.org/2000/svg'/>",
                                    "image/svg+xml", "../évil.svg")
        status, headers, _ = await get(server, f"{V1}/download/{name}/{media_id_of(body['content_uri'])}", token)
        assert headers["Content-Disposition"] == "attachment; filename*=utf-8''%C3%A9vil.svg"
        status, body = await upload(server, token, b"<script>alert(1)</script>", "text/html")
        status, headers, _ = await get(server, f"{V1}/download/{name}/{media_id_of(body['content_uri'])}", token)
        assert headers["Content-Disposition"] == "attachment" and headers["Content-Type"].startswith("text/html")
        # A thumbnail of something that is not an image: 400.
        status, _, data = await get(server, f"{V1}/thumbnail/{name}/{media_id_of(body['content_uri'])}"
                                            "?width=32&height=32", token)
        assert status == 400
        # URL previews are off.
        status, body = await raw(server, "GET", f"{V1}/preview_url?url=https://example.org", token=token)
        assert status == 404


async def test_legacy_switch(db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]) -> None:
    async with client_server(db_factory, tmp_path / "a", test_ca) as server, nio_user(server) as alice:
        name = server_name(server)
        status, body = await upload(server, alice.access_token, b"hello", "text/plain")
        media_id = media_id_of(body["content_uri"])
        status, _, _ = await get(server, f"{LEGACY}/download/{name}/{media_id}")
        assert status == 404
        status, _, _ = await get(server, f"{LEGACY}/thumbnail/{name}/{media_id}?width=32&height=32")
        assert status == 404
    extra = {"media": {"legacy_unauthenticated": True}}
    async with client_server(db_factory, tmp_path / "b", test_ca, extra) as server, nio_user(server) as alice:
        name = server_name(server)
        status, body = await upload(server, alice.access_token, png(), "image/png")
        media_id = media_id_of(body["content_uri"])
        status, headers, data = await get(server, f"{LEGACY}/download/{name}/{media_id}")
        assert status == 200 and data == png() and headers["X-Content-Type-Options"] == "nosniff"
        status, _, _ = await get(server, f"{LEGACY}/thumbnail/{name}/{media_id}?width=32&height=32&method=crop")
        assert status == 200


async def test_async_upload(db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]) -> None:
    async with client_server(db_factory, tmp_path / "a", test_ca) as server, \
            nio_user(server) as alice, nio_user(server) as bob:
        name = server_name(server)
        status, body = await raw(server, "POST", "/_matrix/media/v1/create", token=alice.access_token)
        assert status == 200 and isinstance(body["unused_expires_at"], int)
        media_id = media_id_of(body["content_uri"])
        put = f"{LEGACY}/upload/{name}/{media_id}"

        status, _, data = await get(server, f"{V1}/download/{name}/{media_id}?timeout_ms=0", alice.access_token)
        assert status == 504 and b"M_NOT_YET_UPLOADED" in data
        # A download waiting for the bytes gets them once they arrive.
        waiting = asyncio.create_task(get(server, f"{V1}/download/{name}/{media_id}?timeout_ms=10000",
                                          bob.access_token))
        await asyncio.sleep(0.3)
        status, body = await raw(server, "PUT", put, token=bob.access_token, data=b"x",
                                 headers={"Content-Type": "text/plain"})
        assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
        status, body = await raw(server, "PUT", put + "?filename=a.txt", token=alice.access_token, data=b"async!",
                                 headers={"Content-Type": "text/plain"})
        assert (status, body) == (200, {})
        status, headers, data = await waiting
        assert status == 200 and data == b"async!"
        assert headers["Content-Disposition"] == 'attachment; filename="a.txt"'
        status, body = await raw(server, "PUT", put, token=alice.access_token, data=b"again")
        assert (status, body["errcode"]) == (409, "M_CANNOT_OVERWRITE_MEDIA")
        status, body = await raw(server, "PUT", f"{LEGACY}/upload/{name}/unknownid", token=alice.access_token,
                                 data=b"x")
        assert (status, body["errcode"]) == (404, "M_NOT_FOUND")


async def test_errors_and_leftovers(db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]) -> None:
    extra = {"media": {"max_upload_size": 10_000}}
    async with client_server(db_factory, tmp_path / "a", test_ca, extra) as server, nio_user(server) as alice:
        token, name = alice.access_token, server_name(server)
        status, body = await upload(server, token, b"x" * 10_001, "a/b")
        assert (status, body["errcode"]) == (413, "M_TOO_LARGE")
        # Chunked (no Content-Length) is refused too, and past the limit it is 413.
        async def chunks(n: int) -> Any:
            for _ in range(n):
                yield b"y" * 1000
        status, body = await raw(server, "POST", f"{LEGACY}/upload", token=token, data=chunks(3))
        assert (status, body["errcode"]) == (411, "M_MISSING_PARAM")
        assert stored_files(server) == [] and await media_rows(server) == 0

        for path, expected in (
            (f"{V1}/download/{name}/bad!id", 400),
            (f"{V1}/download/bad_server!/abc", 400),
            (f"{V1}/download/{name}/unknown", 404),
            (f"{V1}/download/remote.example/abc", 502),  # unreachable remote (media/remote.py)
            (f"{V1}/thumbnail/{name}/unknown?width=32&height=32", 404),
            (f"{V1}/thumbnail/{name}/unknown?height=32", 400),
            (f"{V1}/thumbnail/{name}/unknown?width=-3&height=32", 400),
            (f"{V1}/thumbnail/{name}/unknown?width=32&height=32&method=zoom", 400),
            (f"{V1}/thumbnail/{name}/unknown?width=32&height=32&animated=maybe", 400),
        ):
            status, _, data = await get(server, path, token)
            assert status == expected, (path, status, data)
            assert b"errcode" in data

        # A body shorter than its Content-Length, then the connection closed: nothing left.
        _reader, writer = await asyncio.open_connection("127.0.0.1", server.client_port)
        writer.write(
            f"POST {LEGACY}/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: application/octet-stream\r\nContent-Length: 9000\r\n\r\n".encode() + b"z" * 3000
        )
        await writer.drain()

        async def streaming() -> bool:  # the part received is already on disk, in tmp/
            return [p.parent.name for p in stored_files(server)] == ["tmp"]
        await eventually(streaming)
        writer.close()
        await writer.wait_closed()

        async def nothing_left() -> bool:
            return stored_files(server) == [] and await media_rows(server) == 0
        await asyncio.sleep(0.3)
        await eventually(nothing_left)
        # The server still works.
        status, body = await upload(server, token, b"fine", "text/plain")
        assert status == 200 and await media_rows(server) == 1


async def test_upload_rate_limit(db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]) -> None:
    extra = {"media": {"upload_rate_limit": {"per_second": 0.01, "burst_count": 2}}}
    async with client_server(db_factory, tmp_path / "a", test_ca, extra) as server, \
            nio_user(server) as alice, nio_user(server) as bob:
        for _ in range(2):
            assert (await upload(server, alice.access_token, b"x", "text/plain"))[0] == 200
        status, body = await upload(server, alice.access_token, b"x", "text/plain")
        assert (status, body["errcode"]) == (429, "M_LIMIT_EXCEEDED") and body["retry_after_ms"] > 0
        assert (await upload(server, bob.access_token, b"x", "text/plain"))[0] == 200


async def test_nio_upload_and_download(db_factory: DatabaseFactory, tmp_path: Path,
                                       test_ca: tuple[Path, Path]) -> None:
    async with client_server(db_factory, tmp_path / "a", test_ca) as server, nio_user(server) as alice:
        image = png(64, 64)
        resp, _ = await alice.upload(io.BytesIO(image), content_type="image/png", filename="cat.png",
                                     filesize=len(image))
        assert isinstance(resp, UploadResponse), resp
        got = await alice.download(mxc=resp.content_uri)
        assert isinstance(got, DownloadResponse), got
        assert got.body == image and got.content_type == "image/png" and got.filename == "cat.png"
        origin, media_id = resp.content_uri.removeprefix("mxc://").split("/")
        thumb = await alice.thumbnail(origin, media_id, 32, 32, ResizingMethod.crop)
        assert isinstance(thumb, ThumbnailResponse), thumb
        with Image.open(io.BytesIO(thumb.body)) as im:
            assert im.size == (32, 32)
        # HEAD and byte ranges (seeking in a video) work on downloads.
        path = f"{V1}/download/{origin}/{media_id}"
        auth = {"Authorization": f"Bearer {alice.access_token}"}
        async with aiohttp.ClientSession() as s:
            async with s.head(base_url(server) + path, headers=auth) as r:
                assert r.status == 200 and r.headers["Content-Length"] == str(len(image))
            async with s.get(base_url(server) + path, headers={**auth, "Range": "bytes=10-19"}) as r:
                assert r.status == 206 and await r.read() == image[10:20]
