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
import html
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
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


# html.parser is quadratic on malformed input in this Python (a 64 KB page of "<a b=\""
# took 7 s, 1 MB would take half an hour, on the event loop). Pages are read with these
# regexes instead, each linear: a tag's attributes cannot contain "<" or ">" outside quotes.
_ATTR = r"""\s+[^\s=<>"'/]+(?:\s*=\s*(?:"[^"]*"|'[^']*'|[^\s"'=<>`]+))?"""
_META = re.compile(rf"<meta((?:{_ATTR})*)\s*/?>", re.IGNORECASE)
_ATTR_PARTS = re.compile(r"""([^\s=<>"'/]+)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'=<>`]+)))?""")
_TITLE_OPEN = re.compile(rf"<title(?:{_ATTR})*\s*>", re.IGNORECASE)
_TITLE_CLOSE = re.compile(r"</title\s*>", re.IGNORECASE)


def _attrs(raw: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for m in _ATTR_PARTS.finditer(raw):
        out.setdefault(m.group(1).lower(), html.unescape(m.group(2) or m.group(3) or m.group(4) or ""))
    return out


def parse_html(data: bytes, charset: str | None) -> dict[str, str]:
    """The Open Graph data of an HTML page (pure): its ``og:*`` properties, with
    ``og:title`` / ``og:description`` taken from ``<title>`` and the description meta tag
    when the page has none."""
    try:
        text = data.decode(charset or "utf-8", errors="replace")
    except LookupError:
        text = data.decode("utf-8", errors="replace")
    og: dict[str, str] = {}
    description: str | None = None
    for m in _META.finditer(text):
        a = _attrs(m.group(1))
        prop = a.get("property") or a.get("name") or ""
        content = a.get("content", "")[:_MAX_VALUE_CHARS]
        if prop.startswith("og:"):
            if len(og) < _MAX_TAGS:
                og.setdefault(prop, content)
        elif prop.lower() == "description" and description is None:
            description = content
    if "og:title" not in og:
        opened = _TITLE_OPEN.search(text)
        closed = _TITLE_CLOSE.search(text, opened.end()) if opened else None
        if opened and closed:
            title = " ".join(html.unescape(text[opened.end():closed.start()][:4 * _MAX_VALUE_CHARS]).split())
            if title:
                og["og:title"] = title[:_MAX_VALUE_CHARS]
    if "og:description" not in og and description:
        og["og:description"] = description
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
