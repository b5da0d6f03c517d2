"""Our media, for other servers (server-server API, "Content Repository"):

- ``GET /_matrix/federation/v1/media/download/{mediaId}``;
- ``GET /_matrix/federation/v1/media/thumbnail/{mediaId}?width=&height=&method=&animated=``.

X-Matrix authenticated like every federation endpoint (``federation/auth.py``). Only media
uploaded here is served: an unknown ID, and our cached copy of another server's media,
get 404 M_NOT_FOUND (a server asks the media's own server, never us, for it). An upload
still waiting for its bytes gets 504 M_NOT_YET_UPLOADED.

The answer is ``multipart/mixed`` (``media/multipart.py``): ``{}`` metadata, then the
bytes, streamed from the file in chunks with the same ``Content-Type`` and
``Content-Disposition`` rules as the client API (``media/policy.py``). Thumbnails are
those the client API gives (made on first request, then kept).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

from homeserver.errors import MatrixError, not_found
from homeserver.media.errors import CannotThumbnail, ThumbnailSourceTooLarge
from homeserver.media.multipart import content_type_header, encode_head, encode_tail, new_boundary
from homeserver.media.policy import content_disposition, served_content_type, valid_media_id
from homeserver.media.repository import MediaInfo, MediaRepository
from homeserver.metrics import Metrics

V1 = "/_matrix/federation/v1/media"
CHUNK = 64 * 1024
MAX_DIMENSION = 10_000


def _dimension(request: web.Request, name: str) -> int:
    value = request.query.get(name)
    if value is None:
        raise MatrixError(400, "M_MISSING_PARAM", f"{name} is required")
    if not (value.isascii() and value.isdigit() and len(value) <= 6) or not 0 < int(value) <= MAX_DIMENSION:
        raise MatrixError(400, "M_INVALID_PARAM", f"{name} must be an integer from 1 to {MAX_DIMENSION}")
    return int(value)


class FederationMediaAPI:
    def __init__(self, repo: MediaRepository, metrics: Metrics) -> None:
        self._repo = repo
        self._served = metrics.federation_media_served

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(V1 + "/download/{mediaId}", self.on_download),
            web.get(V1 + "/thumbnail/{mediaId}", self.on_thumbnail),
        ]

    async def _local(self, media_id: str) -> MediaInfo:
        info = await self._repo.get(self._repo.server_name, media_id) if valid_media_id(media_id) else None
        if info is None or info.remote:
            raise not_found("Media not found")
        if info.path is None:
            raise MatrixError(504, "M_NOT_YET_UPLOADED", "Content has not yet been uploaded")
        return info

    async def on_download(self, request: web.Request) -> web.StreamResponse:
        info = await self._local(request.match_info["mediaId"])
        assert info.path is not None
        self._served.labels("download").inc()
        return await _stream(request, info.path, info.size, info.content_type, info.upload_name)

    async def on_thumbnail(self, request: web.Request) -> web.StreamResponse:
        media_id = request.match_info["mediaId"]
        width, height = _dimension(request, "width"), _dimension(request, "height")
        method = request.query.get("method", "scale")
        if method not in ("crop", "scale"):
            raise MatrixError(400, "M_INVALID_PARAM", "method must be crop or scale")
        animated = request.query.get("animated", "false")
        if animated not in ("true", "false"):
            raise MatrixError(400, "M_INVALID_PARAM", "animated must be true or false")
        await self._local(media_id)
        try:
            thumb = await self._repo.thumbnail(
                self._repo.server_name, media_id, width, height, method, animated == "true"
            )
        except ThumbnailSourceTooLarge:
            raise MatrixError(413, "M_TOO_LARGE", "The image is too large to make a thumbnail of") from None
        except CannotThumbnail:
            raise MatrixError(400, "M_UNKNOWN", "Cannot generate thumbnails for the requested content") from None
        if thumb is None:
            raise not_found("Media not found")
        self._served.labels("thumbnail").inc()
        return await _stream(request, thumb.path, thumb.size, thumb.content_type, None)


async def _stream(
    request: web.Request, path: Path, size: int, content_type: str, upload_name: str | None
) -> web.StreamResponse:
    """The two-part answer, the file read in chunks (never whole in memory)."""
    try:
        f = await asyncio.to_thread(open, path, "rb")
    except FileNotFoundError:
        raise not_found("Media not found") from None
    with f:
        boundary = new_boundary()
        head = encode_head(boundary, served_content_type(content_type), content_disposition(content_type, upload_name))
        tail = encode_tail(boundary)
        resp = web.StreamResponse(headers={"Content-Type": content_type_header(boundary)})
        resp.content_length = len(head) + size + len(tail)
        await resp.prepare(request)
        await resp.write(head)
        sent = 0
        while sent < size:
            chunk = await asyncio.to_thread(f.read, min(CHUNK, size - sent))
            if not chunk:
                break  # the file is shorter than its row says: the peer sees a short body
            await resp.write(chunk)
            sent += len(chunk)
        if sent == size:
            await resp.write(tail)
        await resp.write_eof()
        return resp
