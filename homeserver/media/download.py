"""One download of another server's media, over federation (server-server API, "Content
Repository"), opened as a stream of bounded chunks.

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
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from urllib.parse import quote, unquote

import aiohttp
from yarl import URL

from homeserver.errors import FederationRequestError
from homeserver.media.multipart import (
    Chunk,
    Event,
    MediaHeaders,
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
    """The label values of ``hs_media_remote_fetches_total`` (with "cached": served from the
    cache, no request made): a bounded set."""

    FETCHED = "fetched"
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


@dataclass(frozen=True, slots=True)
class OpenedMedia:
    """An answer whose headers are read: the media's bytes follow in ``chunks`` (an
    iterator that raises DownloadFailed, never gives more than ``max_bytes`` in all)."""

    content_type: str
    upload_name: str | None
    legacy: bool  # came through the deprecated /_matrix/media/v3 path
    chunks: AsyncIterator[bytes]


class MediaDownloader:
    """Downloads for ``media/remote.py``; ``pool``: the client's pool media uses."""

    def __init__(self, client: FederationClient, pool: str) -> None:
        self._client = client
        self._pool = pool

    @asynccontextmanager
    async def open(
        self, origin: str, media_id: str, thumbnail: Thumbnail | None, *, max_bytes: int, deadline: float,
    ) -> AsyncIterator[OpenedMedia]:
        """The media's answer, open until the block ends; raises DownloadFailed (also from
        ``chunks``). ``deadline``: a ``time.monotonic()`` value it all must end by."""
        async with AsyncExitStack() as stack:
            try:
                opened = await self._open(stack, origin, media_id, thumbnail, max_bytes, deadline)
            except AddressRefused as e:
                raise DownloadFailed(Outcome.REFUSED, str(e)) from None
            except FederationRequestError as e:
                raise _failure(e) from None
            except AddressDenied as e:
                raise DownloadFailed(Outcome.REFUSED, str(e.strerror)) from None
            except TimeoutError:
                raise DownloadFailed(Outcome.TIMEOUT, f"{origin}: timed out") from None
            except (aiohttp.ClientError, OSError, ValueError) as e:  # ValueError: a host IDNA refuses
                raise DownloadFailed(Outcome.ERROR, f"{origin}: {type(e).__name__}") from None
            yield opened

    async def _open(
        self, stack: AsyncExitStack, origin: str, media_id: str, thumbnail: Thumbnail | None, max_bytes: int,
        deadline: float,
    ) -> OpenedMedia:
        kind = "thumbnail" if thumbnail else "download"
        query = thumbnail.query() if thumbnail else {}
        mid = quote(media_id, safe="")
        try:
            resp = await stack.enter_async_context(self._client.stream(
                origin, f"/_matrix/federation/v1/media/{kind}/{mid}", query=query or None,
                pool=self._pool, timeout=_left(deadline),
            ))
        except FederationRequestError as e:
            if not _fallback(e):
                raise
        else:
            return await self._multipart(stack, resp, max_bytes, deadline)
        legacy = {**query, "allow_remote": "false", "allow_redirect": "true"}
        resp = await stack.enter_async_context(self._client.stream(
            origin, f"/_matrix/media/v3/{kind}/{quote(origin, safe='')}/{mid}", query=legacy,
            signed=False, pool=self._pool, timeout=_left(deadline),
        ))
        if resp.status in _REDIRECTS:
            location = resp.headers.get("Location")
            if not location:
                raise DownloadFailed(Outcome.ERROR, "a redirect without a Location")
            resp.close()
            return await self._follow(stack, str(resp.url.join(URL(location))), max_bytes, deadline, legacy=True)
        return _plain(resp, max_bytes, legacy=True)

    async def _multipart(
        self, stack: AsyncExitStack, resp: aiohttp.ClientResponse, max_bytes: int, deadline: float
    ) -> OpenedMedia:
        if resp.status != 200:
            raise DownloadFailed(Outcome.ERROR, f"answered {resp.status}")
        try:
            boundary = boundary_of(resp.headers.get("Content-Type"))
        except MultipartError as e:
            raise DownloadFailed(Outcome.ERROR, f"not a multipart answer: {e}") from None
        parser = MultipartParser(boundary, max_media_bytes=max_bytes)
        early: list[bytes] = []  # media bytes that came with the headers
        while True:  # up to the second part's headers
            data = await _read(resp)
            events = _feed(parser, data)
            for i, event in enumerate(events):
                if isinstance(event, Redirect):
                    resp.close()  # its connection is not held while the Location is fetched
                    return await self._follow(stack, event.location, max_bytes, deadline, legacy=False)
                if isinstance(event, MediaHeaders):
                    early = [e.data for e in events[i + 1 :] if isinstance(e, Chunk)]
                    return OpenedMedia(
                        _content_type(event.content_type), filename_of(event.content_disposition), False,
                        _multipart_chunks(resp, parser, early),
                    )

    async def _follow(
        self, stack: AsyncExitStack, location: str, max_bytes: int, deadline: float, *, legacy: bool
    ) -> OpenedMedia:
        """The media at a ``Location``: once, no further redirect."""
        resp = await stack.enter_async_context(
            self._client.stream_url(location, pool=self._pool, timeout=_left(deadline))
        )
        if resp.status in _REDIRECTS:
            raise DownloadFailed(Outcome.ERROR, "a second redirect is not followed")
        return _plain(resp, max_bytes, legacy=legacy)


def _plain(resp: aiohttp.ClientResponse, max_bytes: int, *, legacy: bool) -> OpenedMedia:
    """An answer that is the media itself (legacy path, or a ``Location``'s)."""
    if resp.status != 200:
        raise DownloadFailed(Outcome.ERROR, f"answered {resp.status}")
    if resp.content_length is not None and resp.content_length > max_bytes:
        raise DownloadFailed(Outcome.TOO_LARGE, f"the media is larger than {max_bytes} bytes")
    return OpenedMedia(
        _content_type(resp.headers.get("Content-Type")), filename_of(resp.headers.get("Content-Disposition")),
        legacy, _plain_chunks(resp, max_bytes),
    )


async def _plain_chunks(resp: aiohttp.ClientResponse, max_bytes: int) -> AsyncIterator[bytes]:
    size = 0
    while data := await _read(resp):
        size += len(data)
        if size > max_bytes:
            raise DownloadFailed(Outcome.TOO_LARGE, f"the media is larger than {max_bytes} bytes")
        yield data
    if resp.content_length is not None and size != resp.content_length:
        raise DownloadFailed(Outcome.ERROR, "the answer ended before its Content-Length")


async def _multipart_chunks(
    resp: aiohttp.ClientResponse, parser: MultipartParser, early: list[bytes]
) -> AsyncIterator[bytes]:
    for data in early:
        yield data
    while not parser.done:
        for event in _feed(parser, await _read(resp)):
            if isinstance(event, Chunk):
                yield event.data


def _feed(parser: MultipartParser, data: bytes) -> list[Event]:
    """The parser's events for ``data`` (empty: the stream ended); DownloadFailed on a
    body that breaks the format or its bounds."""
    try:
        if not data:
            parser.close()  # raises unless the closing delimiter was seen
            return []
        return parser.feed(data)
    except TooLarge as e:
        raise DownloadFailed(Outcome.TOO_LARGE, str(e)) from None
    except MultipartError as e:
        raise DownloadFailed(Outcome.ERROR, f"bad multipart answer: {e}") from None


async def _read(resp: aiohttp.ClientResponse) -> bytes:
    try:
        return await resp.content.read(READ_CHUNK)
    except TimeoutError:
        raise DownloadFailed(Outcome.TIMEOUT, "timed out reading the answer") from None
    except (aiohttp.ClientError, OSError) as e:
        raise DownloadFailed(Outcome.ERROR, f"the answer broke off: {type(e).__name__}") from None


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
