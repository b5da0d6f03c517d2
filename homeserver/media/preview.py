"""URL previews (``GET /_matrix/client/v1/media/preview_url``), off unless
``media.url_preview.enabled``.

Guarantees: every fetch goes through the one outbound client's pool (``net/client.py``), so
its IP-range policy (``federation.ip_range_allowlist`` / ``_denylist``: loopback, private,
link-local and the other special ranges refused by default) holds for every socket,
whatever name led there; an IP-literal host is refused before any connection. Only
``http``/``https``; at most ``MAX_REDIRECTS`` redirects, each checked the same way; the
whole preview (page, redirects, image) within ``url_preview.timeout`` seconds; a page is
read up to ``url_preview.max_page_bytes`` (the rest ignored), an image up to
``media.max_upload_size`` (streamed into the media store, never held in memory); at most
``url_preview.max_concurrent`` previews at once. Answers are cached in memory (bounded)
for ``url_preview.cache_seconds``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any

import aiohttp
from yarl import URL

from homeserver.config import UrlPreviewConfig
from homeserver.media.errors import MediaError
from homeserver.media.policy import base_type, clean_content_type
from homeserver.media.repository import MediaRepository, new_media_id
from homeserver.net.addresses import AddressDenied, AddressPolicy
from homeserver.util.lru import LruCache

log = logging.getLogger(__name__)

MAX_REDIRECTS = 3
CACHE_ENTRIES = 1000
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_VALUE_CHARS = 1000  # one og: value kept at most
_MAX_TAGS = 100  # og: properties kept at most


class PreviewRefused(Exception):
    """The URL is not one we fetch (scheme, a denied address)."""


class PreviewFailed(Exception):
    """The page could not be fetched (unreachable, an error status, too slow)."""


class _OgParser(HTMLParser):
    """Collects ``<title>``, ``<meta name=description>`` and the ``og:*`` properties."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.og: dict[str, str] = {}
        self.title: str | None = None
        self.description: str | None = None
        self._in_title = False
        self._title_parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title" and self.title is None:
            self._in_title = True
        elif tag == "meta":
            a = {k.lower(): (v or "") for k, v in attrs}
            prop = a.get("property") or a.get("name") or ""
            content = a.get("content", "")[:_MAX_VALUE_CHARS]
            if prop.startswith("og:") and len(self.og) < _MAX_TAGS:
                self.og.setdefault(prop, content)
            elif prop.lower() == "description" and self.description is None:
                self.description = content

    def handle_endtag(self, tag: str) -> None:
        if tag == "title" and self._in_title:
            self._in_title = False
            self.title = " ".join("".join(self._title_parts).split())[:_MAX_VALUE_CHARS]

    def handle_data(self, data: str) -> None:
        if self._in_title and sum(map(len, self._title_parts)) < _MAX_VALUE_CHARS:
            self._title_parts.append(data)


def parse_html(data: bytes, charset: str | None) -> dict[str, str]:
    """The Open Graph data of an HTML page (pure): its ``og:*`` properties, with
    ``og:title`` / ``og:description`` taken from ``<title>`` and the description meta tag
    when the page has none."""
    try:
        text = data.decode(charset or "utf-8", errors="replace")
    except LookupError:
        text = data.decode("utf-8", errors="replace")
    parser = _OgParser()
    try:
        parser.feed(text)
        parser.close()
    except Exception:  # a hostile page: keep what was parsed
        pass
    og = dict(parser.og)
    if "og:title" not in og and parser.title:
        og["og:title"] = parser.title
    if "og:description" not in og and parser.description:
        og["og:description"] = parser.description
    return og


@dataclass(frozen=True, slots=True)
class _Fetched:
    url: URL
    content_type: str
    body: bytes | None  # the page (HTML), or None for an image stored as media
    image: dict[str, Any] | None  # og:image* fields of an image stored as media


class UrlPreviewer:
    def __init__(
        self, config: UrlPreviewConfig, repo: MediaRepository, session: Callable[[], aiohttp.ClientSession],
        policy: AddressPolicy,
    ) -> None:
        self.config = config
        self.repo = repo
        self._session = session  # the outbound client's pool (started after construction)
        self.policy = policy
        self._slots = asyncio.Semaphore(config.max_concurrent)
        self._cache: LruCache[str, tuple[float, dict[str, Any]]] = LruCache(CACHE_ENTRIES)

    async def preview(self, url: str) -> dict[str, Any]:
        """The Open Graph data of ``url``; ``PreviewRefused`` / ``PreviewFailed``."""
        hit = self._cache.get(url)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        deadline = time.monotonic() + self.config.timeout
        async with self._slots:
            page = await self._fetch(URL(url), deadline, want_page=True)
            if page.image is not None:
                result: dict[str, Any] = dict(page.image)
            else:
                result = parse_html(page.body or b"", _charset(page.content_type))
                image_url = result.pop("og:image", None)
                if image_url:
                    try:
                        image = await self._fetch(page.url.join(URL(image_url)), deadline, want_page=False)
                    except (PreviewRefused, PreviewFailed, ValueError):
                        image = None
                    if image is not None and image.image is not None:
                        result.update(image.image)
        self._cache[url] = (time.monotonic() + self.config.cache_seconds, result)
        return result

    async def _fetch(self, url: URL, deadline: float, *, want_page: bool) -> _Fetched:
        for _ in range(MAX_REDIRECTS + 1):
            if url.scheme not in ("http", "https") or not url.host:
                raise PreviewRefused("only http and https URLs are previewed")
            try:
                self.policy.check_host(url.host)
            except AddressDenied:
                raise PreviewRefused("the address is not allowed") from None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PreviewFailed("timed out")
            try:
                async with self._session().get(
                    url, timeout=aiohttp.ClientTimeout(total=remaining), allow_redirects=False,
                    headers={"Accept": "text/html, image/*;q=0.9"},
                ) as resp:
                    if resp.status in _REDIRECTS and resp.headers.get("Location"):
                        url = url.join(URL(resp.headers["Location"]))
                        continue
                    if resp.status != 200:
                        raise PreviewFailed(f"status {resp.status}")
                    content_type = clean_content_type(resp.headers.get("Content-Type"))
                    kind = base_type(content_type)
                    if kind.startswith("image/"):
                        return _Fetched(url, content_type, None, await self._store_image(resp, content_type))
                    if not want_page or kind not in ("text/html", "application/xhtml+xml"):
                        raise PreviewFailed(f"not a page: {kind}")
                    body = await resp.content.read(self.config.max_page_bytes)
                    return _Fetched(url, content_type, body, None)
            except aiohttp.ClientConnectorError as e:
                if isinstance(e.os_error, AddressDenied):
                    raise PreviewRefused("the address is not allowed") from None
                raise PreviewFailed("unreachable") from None
            except (TimeoutError, aiohttp.ClientError, OSError) as e:
                raise PreviewFailed(type(e).__name__) from None
        raise PreviewFailed("too many redirects")

    async def _store_image(self, resp: aiohttp.ClientResponse, content_type: str) -> dict[str, Any]:
        async def chunks() -> AsyncIterator[bytes]:
            async for chunk in resp.content.iter_chunked(64 * 1024):
                yield chunk

        media_id = new_media_id()
        try:
            info = await self.repo.store_stream(
                self.repo.server_name, media_id, content_type, None, chunks(), self.repo.config.max_upload_size,
                expected_size=resp.content_length,
            )
        except MediaError as e:
            raise PreviewFailed(f"image: {type(e).__name__}") from None
        return {
            "og:image": f"mxc://{self.repo.server_name}/{media_id}",
            "og:image:type": base_type(content_type),
            "matrix:image:size": info.size,
        }


def _charset(content_type: str) -> str | None:
    for part in content_type.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.strip().lower() == "charset" and value:
            return value.strip().strip('"')
    return None
