"""The content repository of the client-server API (docs/media.md): uploads (direct and
asynchronous), authenticated downloads and thumbnails under ``/_matrix/client/v1/media``,
the media config, and the legacy unauthenticated ``/_matrix/media/v3`` downloads behind
``media.legacy_unauthenticated``.

Guarantees: an upload is streamed from the request into the store, never held whole in
memory, and is refused (413 M_TOO_LARGE) before a byte is read when its Content-Length is
over ``media.max_upload_size``; a body shorter or longer than its Content-Length, or cut
off, leaves no file and no row. Every media response carries ``Content-Disposition``
(attachment unless the type is an allowlisted image/audio/video type) and the security
headers of ``media/policy.py``. Remote media goes through ``MediaRepository.remote`` (the
federation half); without one it is not found.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

from aiohttp import web

from homeserver.client_api.common import Authenticator, query_bool
from homeserver.client_api.ratelimit import RateLimiter
from homeserver.errors import MatrixError, not_found
from homeserver.events.identifiers import is_valid_server_name
from homeserver.http import json_response
from homeserver.media.errors import (
    CannotThumbnail,
    MediaExists,
    MediaNotFound,
    MediaTooLarge,
    NotCreator,
    RemoteMediaTimeout,
    RemoteMediaUnavailable,
    ThumbnailSourceTooLarge,
    TooManyPending,
    UploadIncomplete,
)
from homeserver.media.policy import (
    SECURITY_HEADERS,
    clean_content_type,
    content_disposition,
    sanitise_filename,
    served_content_type,
    valid_media_id,
)
from homeserver.media.preview import PreviewFailed, PreviewRefused, UrlPreviewer
from homeserver.media.repository import MediaInfo, MediaRepository, ThumbnailInfo, new_media_id
from homeserver.util.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)

CHUNK_BYTES = 64 * 1024
# Longest a download of a pending asynchronous upload waits for its bytes (timeout_ms).
DEFAULT_WAIT_MS = 20_000
MAX_WAIT_MS = 60_000
_POLL_SECONDS = 0.25
MAX_THUMBNAIL_DIMENSION = 10_000
MAX_PREVIEW_URL_CHARS = 2048

V1 = "/_matrix/client/v1/media"
LEGACY = ("/_matrix/media/v3", "/_matrix/media/r0")


class MediaAPI:
    def __init__(
        self, server_name: str, auth: Authenticator, repo: MediaRepository, *, clock: Clock = SYSTEM_CLOCK,
        previewer: UrlPreviewer | None = None,
    ) -> None:
        self.server_name = server_name
        self.previewer = previewer  # None: URL previews are off
        self.auth = auth
        self.repo = repo
        self.config = repo.config
        self.clock = clock
        self.upload_limiter = RateLimiter(self.config.upload_rate_limit, clock=clock)

    def routes(self) -> list[web.RouteDef]:
        routes = [
            web.post("/_matrix/media/v3/upload", self.upload),
            web.post("/_matrix/media/r0/upload", self.upload),
            web.post("/_matrix/media/v1/create", self.create),
            web.put("/_matrix/media/v3/upload/{serverName}/{mediaId}", self.upload_async),
            web.get(f"{V1}/config", self.media_config),
            web.get(f"{V1}/download/{{serverName}}/{{mediaId}}", self.download),
            web.get(f"{V1}/download/{{serverName}}/{{mediaId}}/", self.download),
            web.get(f"{V1}/download/{{serverName}}/{{mediaId}}/{{fileName}}", self.download),
            web.get(f"{V1}/thumbnail/{{serverName}}/{{mediaId}}", self.thumbnail),
            web.get(f"{V1}/preview_url", self.preview_url),
        ]
        for base in LEGACY:
            routes += [
                web.get(f"{base}/config", self.media_config),
                web.get(f"{base}/download/{{serverName}}/{{mediaId}}", self.legacy_download),
                web.get(f"{base}/download/{{serverName}}/{{mediaId}}/", self.legacy_download),
                web.get(f"{base}/download/{{serverName}}/{{mediaId}}/{{fileName}}", self.legacy_download),
                web.get(f"{base}/thumbnail/{{serverName}}/{{mediaId}}", self.legacy_thumbnail),
                web.get(f"{base}/preview_url", self.preview_url),
            ]
        return routes

    # ------------------------------------------------------------------ uploads

    async def upload(self, request: web.Request) -> web.Response:
        requester = await self.auth.requester(request)
        self.upload_limiter.enforce(requester.user_id)
        length = self._content_length(request)
        content_type = clean_content_type(request.headers.get("Content-Type"))
        filename = sanitise_filename(request.query.get("filename"))
        media_id = new_media_id()
        with media_errors():
            await self.repo.store_stream(
                self.server_name, media_id, content_type, filename, _body(request),
                self.config.max_upload_size, user_id=requester.user_id, expected_size=length,
            )
        return json_response({"content_uri": f"mxc://{self.server_name}/{media_id}"})

    async def create(self, request: web.Request) -> web.Response:
        requester = await self.auth.requester(request)
        self.upload_limiter.enforce(requester.user_id)
        with media_errors():
            media_id, expires = await self.repo.create_pending(requester.user_id)
        return json_response({"content_uri": f"mxc://{self.server_name}/{media_id}", "unused_expires_at": expires})

    async def upload_async(self, request: web.Request) -> web.Response:
        requester = await self.auth.requester(request)
        server_name, media_id = self._media_ref(request)
        if server_name != self.server_name:
            raise not_found("Media not found")
        self.upload_limiter.enforce(requester.user_id)
        length = self._content_length(request)
        content_type = clean_content_type(request.headers.get("Content-Type"))
        filename = sanitise_filename(request.query.get("filename"))
        with media_errors():
            await self.repo.complete_pending(
                media_id, requester.user_id, content_type, filename, _body(request),
                self.config.max_upload_size, expected_size=length,
            )
        return json_response({})

    def _content_length(self, request: web.Request) -> int:
        """The declared body length: required, and refused at once when over the limit."""
        raw = request.headers.get("Content-Length")
        if raw is None:
            raise MatrixError(411, "M_MISSING_PARAM", "Content-Length is required")
        if not _is_number(raw, 20):
            raise MatrixError(400, "M_INVALID_PARAM", "Content-Length is not a number")
        length = int(raw)
        if length > self.config.max_upload_size:
            raise too_large(self.config.max_upload_size)
        return length

    # ------------------------------------------------------------------ config, previews

    async def media_config(self, request: web.Request) -> web.Response:
        await self.auth.requester(request)
        return json_response({"m.upload.size": self.config.max_upload_size})

    async def preview_url(self, request: web.Request) -> web.Response:
        """The Open Graph data of a URL (media/preview.py), when ``media.url_preview`` is on."""
        requester = await self.auth.requester(request)
        if self.previewer is None:
            raise MatrixError(404, "M_UNRECOGNIZED", "URL previews are disabled on this server")
        url = request.query.get("url")
        if not url:
            raise MatrixError(400, "M_MISSING_PARAM", "url is required")
        if len(url) > MAX_PREVIEW_URL_CHARS:
            raise MatrixError(400, "M_INVALID_PARAM", "url is too long")
        self.upload_limiter.enforce(requester.user_id)
        try:
            return json_response(await self.previewer.preview(url))
        except PreviewRefused as e:
            raise MatrixError(403, "M_FORBIDDEN", f"Not previewed: {e}") from None
        except (PreviewFailed, ValueError) as e:
            log.info("URL preview failed", extra={"reason": str(e)[:200]})
            raise MatrixError(502, "M_UNKNOWN", "The page could not be fetched") from None

    # ------------------------------------------------------------------ downloads

    async def download(self, request: web.Request) -> web.StreamResponse:
        await self.auth.requester(request)
        return await self._download(request, private=True)

    async def legacy_download(self, request: web.Request) -> web.StreamResponse:
        if not self.config.legacy_unauthenticated:
            raise not_found("Unauthenticated media is disabled: use /_matrix/client/v1/media")
        return await self._download(request, private=False)

    async def thumbnail(self, request: web.Request) -> web.StreamResponse:
        await self.auth.requester(request)
        return await self._thumbnail(request, private=True)

    async def legacy_thumbnail(self, request: web.Request) -> web.StreamResponse:
        if not self.config.legacy_unauthenticated:
            raise not_found("Unauthenticated media is disabled: use /_matrix/client/v1/media")
        return await self._thumbnail(request, private=False)

    def _media_ref(self, request: web.Request) -> tuple[str, str]:
        server_name, media_id = request.match_info["serverName"], request.match_info["mediaId"]
        if not is_valid_server_name(server_name):
            raise MatrixError(400, "M_INVALID_PARAM", "Not a valid server name")
        if not valid_media_id(media_id):
            raise MatrixError(400, "M_INVALID_PARAM", "Not a valid media ID")
        return server_name, media_id

    def _wait_ms(self, request: web.Request) -> int:
        raw = request.query.get("timeout_ms")
        if raw is None or raw == "":
            return DEFAULT_WAIT_MS
        if not _is_number(raw, 12):
            raise MatrixError(400, "M_INVALID_PARAM", "timeout_ms must be a non-negative integer")
        return min(int(raw), MAX_WAIT_MS)

    async def _local(self, media_id: str, wait_ms: int) -> MediaInfo:
        """Our own media, waiting up to ``wait_ms`` for a pending upload's bytes."""
        deadline = self.clock.monotonic() + wait_ms / 1000
        while True:
            info = await self.repo.get(self.server_name, media_id)
            if info is None:
                raise not_found("Media not found")
            if not info.pending:
                return info
            if self.clock.monotonic() >= deadline:
                raise MatrixError(504, "M_NOT_YET_UPLOADED", "The media has not been uploaded yet")
            await self.clock.sleep(_POLL_SECONDS)

    async def _media(self, request: web.Request, server_name: str, media_id: str) -> MediaInfo:
        if server_name == self.server_name:
            return await self._local(media_id, self._wait_ms(request))
        remote = self.repo.remote
        if remote is None or request.query.get("allow_remote") == "false":
            raise not_found("Media not found")
        with media_errors(remote=True):
            info = await remote.fetch(server_name, media_id)
        if info is None or info.path is None:
            raise not_found("Media not found")
        return info

    async def _download(self, request: web.Request, *, private: bool) -> web.StreamResponse:
        server_name, media_id = self._media_ref(request)
        info = await self._media(request, server_name, media_id)
        assert info.path is not None
        if not info.path.is_file():
            log.warning("media file missing", extra={"origin": server_name, "media_id": media_id})
            raise not_found("Media not found")
        if info.remote:
            await self.repo.touch(info.origin, info.media_id)
        name = request.match_info.get("fileName") or info.upload_name
        headers = media_headers(info.content_type, name, private=private)
        return web.FileResponse(info.path, chunk_size=CHUNK_BYTES, headers=headers)

    async def _thumbnail(self, request: web.Request, *, private: bool) -> web.StreamResponse:
        server_name, media_id = self._media_ref(request)
        width = _dimension(request, "width")
        height = _dimension(request, "height")
        method = request.query.get("method", "scale")
        if method not in ("scale", "crop"):
            raise MatrixError(400, "M_INVALID_PARAM", "method must be scale or crop")
        animated = query_bool(request, "animated")
        thumb: ThumbnailInfo | None
        with media_errors(remote=server_name != self.server_name):
            if server_name == self.server_name:
                await self._local(media_id, self._wait_ms(request))
                thumb = await self.repo.thumbnail(server_name, media_id, width, height, method, animated)
            else:
                remote = self.repo.remote
                if remote is None or request.query.get("allow_remote") == "false":
                    raise not_found("Media not found")
                thumb = await remote.fetch_thumbnail(server_name, media_id, width, height, method, animated)
        if thumb is None or not thumb.path.is_file():
            raise not_found("Media not found")
        headers = media_headers(thumb.content_type, None, private=private)
        return web.FileResponse(thumb.path, chunk_size=CHUNK_BYTES, headers=headers)


def media_headers(content_type: str, filename: str | None, *, private: bool) -> dict[str, str]:
    """The headers of a download or thumbnail (media/policy.py decides their values)."""
    return {
        "Content-Type": served_content_type(content_type),
        "Content-Disposition": content_disposition(content_type, filename),
        "Cache-Control": ("private" if private else "public") + ", max-age=86400",
        **SECURITY_HEADERS,
    }


def _dimension(request: web.Request, name: str) -> int:
    raw = request.query.get(name)
    if raw is None:
        raise MatrixError(400, "M_MISSING_PARAM", f"{name} is required")
    if not _is_number(raw, 6) or not 1 <= int(raw) <= MAX_THUMBNAIL_DIMENSION:
        raise MatrixError(400, "M_INVALID_PARAM", f"{name} must be a positive integer")
    return int(raw)


def _is_number(raw: str, max_digits: int) -> bool:
    """ASCII digits only (``str.isdigit`` also takes "²", which ``int`` refuses), and few
    enough that ``int`` converts them (it refuses over 4300 digits)."""
    return raw.isascii() and raw.isdigit() and len(raw) <= max_digits


async def _body(request: web.Request) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_chunked(CHUNK_BYTES):
        yield chunk


def too_large(limit: int) -> MatrixError:
    return MatrixError(413, "M_TOO_LARGE", f"Media is larger than the limit of {limit} bytes")


@contextmanager
def media_errors(*, remote: bool = False) -> Iterator[None]:
    """Translate the media repository's errors into the spec's Matrix errors (media too
    large is 413 for an upload, 502 for a remote server's media; a remote fetch that timed
    out is 504, one that failed otherwise 502)."""
    try:
        yield
    except MediaTooLarge as e:
        raise MatrixError(502 if remote else 413, "M_TOO_LARGE", str(e) or "Media is too large") from None
    except UploadIncomplete as e:
        raise MatrixError(400, "M_INVALID_PARAM", f"Incomplete upload: {e}") from None
    except MediaNotFound:
        raise not_found("Media not found") from None
    except NotCreator:
        raise MatrixError(403, "M_FORBIDDEN", "Only the creator of this media ID may upload to it") from None
    except MediaExists:
        raise MatrixError(409, "M_CANNOT_OVERWRITE_MEDIA", "Media has already been uploaded") from None
    except TooManyPending:
        raise MatrixError(429, "M_LIMIT_EXCEEDED", "Too many asynchronous uploads pending",
                          retry_after_ms=60_000) from None
    except ThumbnailSourceTooLarge:
        raise MatrixError(413, "M_TOO_LARGE", "The image is too large to make a thumbnail of") from None
    except CannotThumbnail:
        raise MatrixError(400, "M_UNKNOWN", "Cannot make a thumbnail of this media") from None
    except RemoteMediaTimeout:
        # The spec's download and thumbnail endpoints: 504 M_NOT_YET_UPLOADED, the content
        # is not available yet (the client may ask again; the fetch is not cached as failed).
        raise MatrixError(504, "M_NOT_YET_UPLOADED", "The remote server did not supply the media in time") from None
    except RemoteMediaUnavailable:
        raise MatrixError(502, "M_UNKNOWN", "The remote server could not supply the media") from None
