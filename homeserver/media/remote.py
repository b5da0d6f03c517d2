"""Other servers' media, fetched over federation and cached: the ``RemoteMediaFetcher``
the media repository calls for a server name that is not ours (``repository.py``).

- A cached copy is served as it is (its last access recorded): one request to the origin
  per piece of media, until the purge forgets it.
- Otherwise one fetch (``download.py``: the federation endpoint, the legacy path for
  servers without it, one ``Location`` followed) streams the bytes into the store
  (``MediaRepository.store_stream``): nothing is cached unless it arrived whole and within
  ``media.max_upload_size``.
- Concurrent requests for the same media share that one fetch (``SingleFlight``); fetches
  run within ``media.remote_fetch.max_concurrent`` in all and
  ``media.remote_fetch.max_per_host`` per server, at most
  ``media.remote_fetch.max_pending`` running or waiting (``FetchSlots``), each within
  ``media.remote_fetch.timeout`` from the moment it is asked for (waiting included), through
  a connection pool of their own in the one outbound client, so media never takes the
  sockets that transactions use.
- Thumbnails are made here from the cached media (``MediaRepository.thumbnail``), as for
  local media; only media we cannot make thumbnails of (video, say) gets the origin's own
  thumbnail (the thumbnail endpoints), kept beside the cached media.

Every outcome is counted in ``hs_media_remote_fetches_total{outcome}`` (bounded labels:
``MEDIA_FETCH_OUTCOMES``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from homeserver.config import MediaConfig
from homeserver.media.download import DownloadFailed, MediaDownloader, OpenedMedia, Outcome, Thumbnail
from homeserver.media.errors import CannotThumbnail, MediaTooLarge, RemoteMediaTimeout, RemoteMediaUnavailable
from homeserver.media.fetchlimits import FetchSlots, SingleFlight, TooManyFetches
from homeserver.media.policy import clean_content_type, sanitise_filename, valid_media_id
from homeserver.media.repository import MediaInfo, MediaRepository, ThumbnailInfo
from homeserver.net.client import FederationClient

log = logging.getLogger(__name__)

MEDIA_POOL = "media"
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RemoteMediaLimits:
    max_bytes: int
    timeout: float
    max_concurrent: int
    per_host: int
    max_pending: int

    @classmethod
    def from_config(cls, config: MediaConfig) -> RemoteMediaLimits:
        f = config.remote_fetch
        return cls(config.max_upload_size, f.timeout, f.max_concurrent, f.max_per_host, f.max_pending)


_FetchKey = tuple[str, str, Thumbnail | None]


class FederationMediaFetcher:
    """The repository's ``remote``: ``attach`` opens the client's media pool and sets it."""

    def __init__(self, repo: MediaRepository, client: FederationClient, limits: RemoteMediaLimits) -> None:
        self._repo = repo
        self._limits = limits
        self._downloader = MediaDownloader(client, MEDIA_POOL)
        self._slots = FetchSlots(limits.max_concurrent, limits.per_host, limits.max_pending)
        self._flights: SingleFlight[_FetchKey, MediaInfo | ThumbnailInfo | None] = SingleFlight()
        self._client = client

    @classmethod
    def attach(cls, repo: MediaRepository, client: FederationClient) -> FederationMediaFetcher:
        limits = RemoteMediaLimits.from_config(repo.config)
        client.open_pool(MEDIA_POOL, limits.max_concurrent, limits.per_host, limits.timeout)
        fetcher = cls(repo, client, limits)
        repo.remote = fetcher
        return fetcher

    @property
    def slots(self) -> FetchSlots:
        return self._slots

    # ------------------------------------------------------------------ the hook

    async def fetch(self, origin: str, media_id: str) -> MediaInfo | None:
        """The cached copy of ``origin``'s media, fetched first if need be; None if the
        origin has no such media. RemoteMediaUnavailable / MediaTooLarge otherwise."""
        if origin == self._repo.server_name or not valid_media_id(media_id):
            return None
        cached = await self._cached(origin, media_id)
        if cached is not None:
            return cached
        result = await self._flights.run((origin, media_id, None), lambda: self._fetch(origin, media_id))
        assert not isinstance(result, ThumbnailInfo)
        return result

    async def fetch_thumbnail(
        self, origin: str, media_id: str, width: int, height: int, method: str, animated: bool
    ) -> ThumbnailInfo | None:
        info = await self.fetch(origin, media_id)
        if info is None:
            return None
        try:
            return await self._repo.thumbnail(origin, media_id, width, height, method, animated)
        except CannotThumbnail:
            pass
        # Not an image we read: the origin's own thumbnail, if it makes one.
        wanted = Thumbnail(width, height, method, animated)
        row = await self._repo.store.get_thumbnail(origin, media_id, width, height, method, animated)
        if row is not None:
            return self._repo.thumbnail_info(row)
        result = await self._flights.run(
            (origin, media_id, wanted), lambda: self._fetch_thumbnail(origin, media_id, wanted)
        )
        assert not isinstance(result, MediaInfo)
        return result

    # ------------------------------------------------------------------ fetching

    async def _cached(self, origin: str, media_id: str) -> MediaInfo | None:
        info = await self._repo.get(origin, media_id)
        if info is None or not info.remote or info.path is None or not info.path.is_file():
            return None  # not cached (or its file is gone: fetched again, the row replaced)
        await self._repo.touch(origin, media_id)
        self._count("cached")
        return info

    async def _fetch(self, origin: str, media_id: str) -> MediaInfo | None:
        async def store(opened: OpenedMedia) -> MediaInfo:
            return await self._repo.store_stream(
                origin, media_id, clean_content_type(opened.content_type), sanitise_filename(opened.upload_name),
                opened.chunks, self._limits.max_bytes,
            )

        # Another request may have cached it while this one waited to start.
        cached = await self._cached(origin, media_id)
        return cached if cached is not None else await self._run(origin, media_id, None, store)

    async def _fetch_thumbnail(self, origin: str, media_id: str, wanted: Thumbnail) -> ThumbnailInfo | None:
        repo = self._repo

        async def store(opened: OpenedMedia) -> ThumbnailInfo:
            staged = await repo.files.stage(opened.chunks, self._limits.max_bytes)
            return repo.thumbnail_info(await repo.keep_thumbnail(
                origin, media_id, wanted.width, wanted.height, wanted.method, bool(wanted.animated),
                clean_content_type(opened.content_type), staged,
            ))

        return await self._run(origin, media_id, wanted, store)

    async def _run(
        self, origin: str, media_id: str, thumbnail: Thumbnail | None,
        store: Callable[[OpenedMedia], Awaitable[T]],
    ) -> T | None:
        """One bounded fetch: a slot, the download, the store, all within the timeout;
        counted, and mapped to the repository's errors (None: the origin has no such
        media)."""
        deadline = time.monotonic() + self._limits.timeout
        outcome = Outcome.ERROR
        try:
            async with asyncio.timeout(self._limits.timeout), self._slots.slot(origin):
                async with self._downloader.open(
                    origin, media_id, thumbnail, max_bytes=self._limits.max_bytes, deadline=deadline
                ) as opened:
                    result = await store(opened)
            outcome = Outcome.FETCHED
            return result
        except TooManyFetches:
            outcome = Outcome.REFUSED
            raise RemoteMediaUnavailable("too many remote media fetches") from None
        except DownloadFailed as e:
            outcome = e.outcome
            log.info("remote media fetch failed", extra={"origin": origin, "outcome": e.outcome.value,
                                                          "reason": str(e)[:200]})
            if e.outcome is Outcome.NOT_FOUND:
                return None
            if e.outcome is Outcome.TOO_LARGE:
                raise MediaTooLarge(str(e)) from None
            if e.outcome is Outcome.TIMEOUT:
                raise RemoteMediaTimeout(str(e)) from None
            raise RemoteMediaUnavailable(str(e)) from None
        except MediaTooLarge:
            outcome = Outcome.TOO_LARGE
            raise
        except TimeoutError:  # the deadline passed (waiting for a slot, or storing)
            outcome = Outcome.TIMEOUT
            raise RemoteMediaTimeout("timed out") from None
        finally:
            self._count(outcome.value)

    def _count(self, outcome: str) -> None:
        self._repo.metrics.media_remote_fetches.labels(outcome).inc()
