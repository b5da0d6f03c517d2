"""One download of another server's media, over federation (server-server API, "Content
Repository"), into a sink, within bounds.

1. ``GET /_matrix/federation/v1/media/download/{mediaId}`` (or ``/thumbnail/{mediaId}``),
   X-Matrix signed, through the one outbound client and its IP-range policy. The answer is
   ``multipart/mixed`` (``media/multipart.py``): metadata, then the bytes or a
   ``Location``.
2. A server that does not know the endpoint (404 M_UNRECOGNIZED, or 400, 405, 501, or a
   404 that is not JSON) is asked the deprecated
   ``/_matrix/media/v3/download/{serverName}/{mediaId}`` (or ``/thumbnail``) with
   ``allow_remote=false`` (the spec: it must not fetch it from elsewhere for us) and
   ``allow_redirect=true``. Its answer is the bytes themselves.
3. A ``Location`` (a multipart second part, or a 3xx of the legacy path) is followed once,
   https only, unsigned, through the same client and policy (``stream_url``): the URL may
   name any host, so its address is checked like any other.

Every byte counts against ``max_bytes`` (a declared Content-Length above it is refused
before any is read), every wait against the caller's deadline; ``DownloadFailed`` says
which of the bounded outcomes (``Outcome``) ended it.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import quote, unquote

import aiohttp
from yarl import URL

from homeserver.errors import FederationRequestError
from homeserver.media.multipart import (
    Chunk,
    End,
    MediaHeaders,
    Metadata,
    MultipartError,
    MultipartParser,
    Redirect,
    TooLarge,
    boundary_of,
)
from homeserver.net.addresses import AddressDenied
from homeserver.net.client import AddressRefused, FederationClient

READ_CHUNK = 64 * 1024
MAX_FILENAME_CHARS = 255
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_FALLBACK_STATUSES = frozenset({400, 405, 501})


class Outcome(enum.Enum):
    """The label values of ``hs_media_remote_fetches_total``: a bounded set."""

    OK = "ok"
    NOT_FOUND = "not_found"
    TOO_LARGE = "too_large"
    TIMEOUT = "timeout"
    ERROR = "error"
    REFUSED = "refused"


class DownloadFailed(Exception):
    def __init__(self, outcome: Outcome, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome


@dataclass(frozen=True, slots=True)
class Downloaded:
    content_type: str
    upload_name: str | None
    size: int
    legacy: bool  # came through the deprecated /_matrix/media/v3 path


@dataclass(frozen=True, slots=True)
class Thumbnail:
    """What a thumbnail request asks for (the query of both paths)."""

    width: int
    height: int
    method: str
    animated: bool | None = None

    def query(self) -> dict[str, str]:
        q = {"width": str(self.width), "height": str(self.height), "method": self.method}
        if self.animated is not None:
            q["animated"] = "true" if self.animated else "false"
        return q


Sink = Callable[[bytes], Awaitable[None]]


def _fallback(e: FederationRequestError) -> bool:
    """Whether the answer says the server does not have the federation media endpoint."""
    if e.status == 404:
        return e.errcode != "M_NOT_FOUND"  # M_UNRECOGNIZED, or a proxy's non-JSON 404
    return e.status in _FALLBACK_STATUSES


def filename_of(disposition: str | None) -> str | None:
    """The file name a Content-Disposition gives (``filename*=UTF-8''...`` preferred),
    without path separators or control characters, at most ``MAX_FILENAME_CHARS``."""
    if not disposition:
        return None
    plain: str | None = None
    extended: str | None = None
    for param in disposition.split(";")[1:]:
        name, eq, value = param.partition("=")
        if not eq:
            continue
        name, value = name.strip().lower(), value.strip()
        if name == "filename*":
            charset, _, rest = value.partition("'")
            _, _, encoded = rest.partition("'")
            if charset.lower() in ("utf-8", "us-ascii"):
                extended = unquote(encoded, encoding="utf-8", errors="replace")
        elif name == "filename":
            plain = value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value
    chosen = extended if extended is not None else plain
    if chosen is None:
        return None
    name = "".join(c for c in chosen if c.isprintable() and c not in "/\\").strip()
    return name[:MAX_FILENAME_CHARS] or None


class MediaDownloader:
    """Downloads for ``media/remote.py``; ``pool``: the client's pool media uses."""

    def __init__(self, client: FederationClient, pool: str) -> None:
        self._client = client
        self._pool = pool

    async def download(
        self, origin: str, media_id: str, thumbnail: Thumbnail | None, sink: Sink, *, max_bytes: int,
        deadline: float,
    ) -> Downloaded:
        """Write the media's bytes to ``sink``; raise DownloadFailed. ``deadline``: a
        ``time.monotonic()`` value the whole download must end by."""
        kind = "thumbnail" if thumbnail else "download"
        query = thumbnail.query() if thumbnail else {}
        mid = quote(media_id, safe="")
        try:
            try:
                async with self._client.stream(
                    origin, f"/_matrix/federation/v1/media/{kind}/{mid}", query=query or None,
                    pool=self._pool, timeout=_left(deadline),
                ) as resp:
                    return await self._read_multipart(resp, sink, max_bytes, deadline)
            except FederationRequestError as e:
                if not _fallback(e):
                    raise
            legacy = {**query, "allow_remote": "false", "allow_redirect": "true"}
            async with self._client.stream(
                origin, f"/_matrix/media/v3/{kind}/{quote(origin, safe='')}/{mid}", query=legacy,
                signed=False, pool=self._pool, timeout=_left(deadline),
            ) as resp:
                return await self._read_plain(resp, sink, max_bytes, deadline, legacy=True, may_redirect=True)
        except AddressRefused as e:
            raise DownloadFailed(Outcome.REFUSED, str(e)) from None
        except FederationRequestError as e:
            raise _failure(e) from None
        except AddressDenied as e:
            raise DownloadFailed(Outcome.REFUSED, str(e.strerror)) from None
        except (aiohttp.ClientError, OSError) as e:  # a read that broke off after the answer began
            raise DownloadFailed(Outcome.ERROR, f"{origin}: {type(e).__name__}") from None

    async def _read_multipart(
        self, resp: aiohttp.ClientResponse, sink: Sink, max_bytes: int, deadline: float
    ) -> Downloaded:
        try:
            boundary = boundary_of(resp.headers.get("Content-Type"))
        except MultipartError as e:
            raise DownloadFailed(Outcome.ERROR, f"not a multipart answer: {e}") from None
        parser = MultipartParser(boundary, max_media_bytes=max_bytes)
        headers: MediaHeaders | None = None
        size = 0
        try:
            while not parser.done:
                data = await resp.content.read(READ_CHUNK)
                if not data:
                    parser.close()  # raises: the stream ended before the closing delimiter
                for event in parser.feed(data):
                    if isinstance(event, Chunk):
                        size += len(event.data)
                        await sink(event.data)
                    elif isinstance(event, MediaHeaders):
                        headers = event
                    elif isinstance(event, Redirect):
                        return await self._follow(event.location, sink, max_bytes, deadline)
                    elif isinstance(event, End | Metadata):
                        pass
        except TooLarge as e:
            raise DownloadFailed(Outcome.TOO_LARGE, str(e)) from None
        except MultipartError as e:
            raise DownloadFailed(Outcome.ERROR, f"bad multipart answer: {e}") from None
        assert headers is not None  # the parser gives End only after two parts
        return Downloaded(_content_type(headers.content_type), filename_of(headers.content_disposition), size, False)

    async def _follow(self, location: str, sink: Sink, max_bytes: int, deadline: float) -> Downloaded:
        """The media at a ``Location``: once, no further redirect."""
        async with self._client.stream_url(location, pool=self._pool, timeout=_left(deadline)) as resp:
            return await self._read_plain(resp, sink, max_bytes, deadline, legacy=False, may_redirect=False)

    async def _read_plain(
        self, resp: aiohttp.ClientResponse, sink: Sink, max_bytes: int, deadline: float, *, legacy: bool,
        may_redirect: bool,
    ) -> Downloaded:
        if resp.status in _REDIRECTS:
            location = resp.headers.get("Location")
            if not may_redirect or not location:
                raise DownloadFailed(Outcome.ERROR, "a redirect that may not be followed")
            return await self._follow(str(resp.url.join(URL(location))), sink, max_bytes, deadline)
        if resp.status != 200:
            raise DownloadFailed(Outcome.ERROR, f"answered {resp.status}")
        if resp.content_length is not None and resp.content_length > max_bytes:
            raise DownloadFailed(Outcome.TOO_LARGE, f"the media is larger than {max_bytes} bytes")
        size = 0
        while True:
            data = await resp.content.read(READ_CHUNK)
            if not data:
                break
            size += len(data)
            if size > max_bytes:
                raise DownloadFailed(Outcome.TOO_LARGE, f"the media is larger than {max_bytes} bytes")
            await sink(data)
        return Downloaded(
            _content_type(resp.headers.get("Content-Type")),
            filename_of(resp.headers.get("Content-Disposition")), size, legacy,
        )


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise DownloadFailed(Outcome.TIMEOUT, "out of time")
    return left


def _content_type(value: str | None) -> str:
    if not value or len(value) > 255 or not value.isprintable():
        return "application/octet-stream"
    return value.strip()


def _failure(e: FederationRequestError) -> DownloadFailed:
    if "timed out" in str(e):
        return DownloadFailed(Outcome.TIMEOUT, str(e))
    if e.status == 404:
        return DownloadFailed(Outcome.NOT_FOUND, str(e))
    if e.errcode == "M_TOO_LARGE":
        return DownloadFailed(Outcome.TOO_LARGE, str(e))
    return DownloadFailed(Outcome.ERROR, str(e))
