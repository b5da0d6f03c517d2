"""The media repository: one object per server, reached as ``Services.media`` (app.py) and
given to the client API; the federation media endpoints and the remote fetcher use the
same object.

Guarantees: bytes are streamed to disk (``files.py``) and never held whole in memory; a
row is written only after its file is in place, so an upload that fails (too large, wrong
length, the peer gone) leaves no file and no row; identical bytes share one file;
thumbnails are made once per (media, size, method, animated) and kept. A remote server's
media is reached through ``remote`` (a ``RemoteMediaFetcher``, None until the federation
half supplies one: remote media is then not found).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from homeserver.config import Config, MediaConfig
from homeserver.media.errors import (
    CannotThumbnail,
    MediaExists,
    MediaNotFound,
    NotCreator,
    TooManyPending,
)
from homeserver.media.files import MediaFiles, StagedFile
from homeserver.media.thumbnails import ANIMATABLE, can_thumbnail, choose_size, render
from homeserver.metrics import Metrics
from homeserver.storage.database import Database
from homeserver.storage.media import MediaRow, MediaStore, ThumbnailRow
from homeserver.util.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)

# A purge deletes a file only if it was not touched in this many seconds (an upload of the
# same bytes may have refreshed it just before inserting its row).
_PURGE_FILE_GRACE_SECONDS = 3600
# Thumbnails being made at once (CPU in worker threads).
_THUMBNAIL_CONCURRENCY = 2


@dataclass(frozen=True, slots=True)
class MediaInfo:
    origin: str
    media_id: str
    content_type: str
    upload_name: str | None
    size: int
    sha256: str | None  # None while an asynchronous upload waits for its bytes
    created_ts: int
    last_access_ts: int
    user_id: str | None  # the uploader (local media)
    remote: bool
    path: Path | None  # the file, None while pending

    @property
    def pending(self) -> bool:
        return self.sha256 is None


@dataclass(frozen=True, slots=True)
class ThumbnailInfo:
    width: int  # the configured size this thumbnail answers (the image may be smaller)
    height: int
    method: str
    animated: bool
    content_type: str
    size: int
    sha256: str
    path: Path


@dataclass(frozen=True, slots=True)
class PurgeResult:
    media: int  # rows deleted
    files: int  # files deleted
    bytes: int  # their bytes


class RemoteMediaFetcher(Protocol):
    """Fetches and caches a remote server's media (the federation half supplies it).

    ``fetch`` returns the cached (or newly fetched and stored, through
    ``MediaRepository.store_stream``) media, None if the remote server says it has no such
    media; it raises ``RemoteMediaUnavailable`` when the server cannot be reached or
    answers badly, ``MediaTooLarge`` past ``media.max_upload_size``.
    ``fetch_thumbnail`` likewise returns a thumbnail (None: none to be had).
    """

    async def fetch(self, origin: str, media_id: str) -> MediaInfo | None: ...

    async def fetch_thumbnail(
        self, origin: str, media_id: str, width: int, height: int, method: str, animated: bool
    ) -> ThumbnailInfo | None: ...


def store_path(config: Config) -> Path:
    """``media.store_path``, or ``<data_dir>/media``."""
    return Path(config.media.store_path) if config.media.store_path else Path(config.data_dir) / "media"


def new_media_id() -> str:
    return secrets.token_urlsafe(18)  # 24 characters of [A-Za-z0-9_-]


class MediaRepository:
    def __init__(
        self, server_name: str, config: MediaConfig, root: Path, store: MediaStore,
        metrics: Metrics | None = None, *, clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.server_name = server_name
        self.config = config
        self.files = MediaFiles(root)
        self.store = store
        self.metrics = metrics or Metrics()
        self.clock = clock
        self.remote: RemoteMediaFetcher | None = None
        self._thumbnailing = asyncio.Semaphore(_THUMBNAIL_CONCURRENCY)

    @classmethod
    def open(
        cls, config: Config, db: Database, metrics: Metrics | None = None, *, clock: Clock = SYSTEM_CLOCK
    ) -> MediaRepository:
        """The server's repository: its directories made, crash left-overs removed."""
        repo = cls(config.server_name, config.media, store_path(config), MediaStore(db), metrics, clock=clock)
        repo.files.prepare()
        return repo

    # ------------------------------------------------------------------ reading

    def _info(self, row: MediaRow) -> MediaInfo:
        path = None if row.sha256 is None else self.files.path_for(row.sha256)
        return MediaInfo(
            row.origin, row.media_id, row.content_type, row.upload_name, row.size, row.sha256,
            row.created_ts, row.last_access_ts, row.user_id, row.remote, path,
        )

    async def get(self, origin: str, media_id: str) -> MediaInfo | None:
        """The media's metadata and file path; None if unknown (or a pending upload that
        expired). A pending upload is returned with ``pending`` true and no path."""
        row = await self.store.get(origin, media_id)
        if row is None:
            return None
        if row.sha256 is None and (row.unused_expires_ts or 0) <= self.clock.time_ms():
            return None
        return self._info(row)

    async def touch(self, origin: str, media_id: str) -> None:
        """Record an access (remote media not accessed for a while is purged)."""
        await self.store.touch(origin, media_id, self.clock.time_ms())

    # ------------------------------------------------------------------ writing

    async def store_stream(
        self, origin: str, media_id: str, content_type: str, upload_name: str | None,
        chunks: AsyncIterable[bytes], max_bytes: int, *, user_id: str | None = None,
        expected_size: int | None = None,
    ) -> MediaInfo:
        """Stream ``chunks`` into the store and record the media. Local media (``origin``
        is us) must be new (``MediaExists`` otherwise); remote media replaces the cached
        copy. Raises ``MediaTooLarge`` / ``UploadIncomplete`` with nothing left behind."""
        remote = origin != self.server_name
        staged = await self.files.stage(chunks, max_bytes, expected_size)
        now = self.clock.time_ms()
        row = MediaRow(
            origin, media_id, content_type, upload_name, staged.size, staged.sha256, now, now, user_id, remote, None
        )
        replaced = await self.store.get(origin, media_id) if remote else None
        try:
            self.files.commit(staged)
            if remote:
                await self.store.upsert_remote(row)
            elif not await self.store.insert(row):
                raise MediaExists(f"{origin}/{media_id} exists")
        except BaseException:
            self.files.discard(staged)  # a no-op once committed: the file may be shared
            raise
        if replaced is not None and replaced.sha256 not in (None, staged.sha256):
            # A cached copy replaced by other bytes: its file, if nothing else refers to it.
            assert replaced.sha256 is not None
            if not await self.store.referenced(replaced.sha256):
                self.files.delete(replaced.sha256, older_than=time.time() - _PURGE_FILE_GRACE_SECONDS)
        self._count_upload(staged.size, remote)
        return self._info(row)

    def _count_upload(self, size: int, remote: bool) -> None:
        kind = "remote" if remote else "local"
        self.metrics.media_uploads.labels(kind).inc()
        self.metrics.media_bytes_stored.labels(kind).inc(size)

    async def create_pending(self, user_id: str) -> tuple[str, int]:
        """Reserve a media ID for an asynchronous upload by ``user_id``: (media_id, the ms
        time it expires unused). ``TooManyPending`` past ``media.max_pending_uploads``."""
        now = self.clock.time_ms()
        await self.store.delete_expired_pending(now)
        if await self.store.count_pending(user_id, now) >= self.config.max_pending_uploads:
            raise TooManyPending("too many asynchronous uploads waiting for their bytes")
        expires = now + self.config.unused_expiry_seconds * 1000
        media_id = new_media_id()
        row = MediaRow(
            self.server_name, media_id, "application/octet-stream", None, 0, None, now, now, user_id, False, expires
        )
        if not await self.store.insert(row):  # pragma: no cover - 144 random bits
            raise MediaExists(media_id)
        return media_id, expires

    async def complete_pending(
        self, media_id: str, user_id: str, content_type: str, upload_name: str | None,
        chunks: AsyncIterable[bytes], max_bytes: int, expected_size: int | None = None,
    ) -> MediaInfo:
        """Give ``user_id``'s asynchronous upload its bytes: ``MediaNotFound`` (unknown or
        expired), ``NotCreator``, ``MediaExists`` (it has its bytes already)."""
        row = await self.store.get(self.server_name, media_id)
        now = self.clock.time_ms()
        if row is None or (row.sha256 is None and (row.unused_expires_ts or 0) <= now):
            raise MediaNotFound(media_id)
        if row.user_id != user_id:
            raise NotCreator(media_id)
        if row.sha256 is not None:
            raise MediaExists(media_id)
        staged = await self.files.stage(chunks, max_bytes, expected_size)
        try:
            self.files.commit(staged)
            done = await self.store.complete_pending(
                self.server_name, media_id, user_id, content_type, upload_name, staged.size, staged.sha256,
                self.clock.time_ms(),
            )
            if not done:
                raise MediaExists(media_id)  # another request won the race (or it expired)
        except BaseException:
            self.files.discard(staged)
            raise
        self._count_upload(staged.size, False)
        info = await self.get(self.server_name, media_id)
        assert info is not None
        return info

    # ------------------------------------------------------------------ thumbnails

    async def thumbnail(
        self, origin: str, media_id: str, width: int, height: int, method: str, animated: bool = False
    ) -> ThumbnailInfo | None:
        """The thumbnail answering a request for ``width`` x ``height`` by ``method``
        (made now and kept if it does not exist yet); None if the media is unknown or
        pending here, ``CannotThumbnail`` if it is not an image we can read
        (``ThumbnailSourceTooLarge`` if it has too many pixels)."""
        info = await self.get(origin, media_id)
        if info is None or info.path is None:
            return None
        if not can_thumbnail(info.content_type):
            raise CannotThumbnail(info.content_type)
        size = choose_size(self.config.thumbnail_sizes, width, height, method)
        if size is None:
            raise CannotThumbnail("no thumbnail sizes configured")
        want_animated = animated and info.content_type.split(";")[0].strip().lower() in ANIMATABLE
        key = (origin, media_id, size.width, size.height, size.method, want_animated)
        row = await self.store.get_thumbnail(*key)
        if row is None:
            # Two first requests at once may both make it: the first row stays.
            made = await self._make_thumbnail(info, size.width, size.height, size.method, want_animated)
            row = None if made is None else (await self.store.get_thumbnail(*key) or made)
        if row is None:
            raise CannotThumbnail("the image could not be read")
        return self.thumbnail_info(row)

    def thumbnail_info(self, row: ThumbnailRow) -> ThumbnailInfo:
        """A stored thumbnail's description and file."""
        return ThumbnailInfo(
            row.width, row.height, row.method, row.animated, row.content_type, row.size, row.sha256,
            self.files.path_for(row.sha256),
        )

    async def keep_thumbnail(
        self, origin: str, media_id: str, width: int, height: int, method: str, animated: bool,
        content_type: str, staged: StagedFile,
    ) -> ThumbnailRow:
        """Commit a staged thumbnail of (origin, media_id) and record it; the staged file is
        discarded when either fails."""
        row = ThumbnailRow(origin, media_id, width, height, method, animated, content_type, staged.size,
                           staged.sha256, self.clock.time_ms())
        try:
            self.files.commit(staged)
            await self.store.put_thumbnail(row)
        except BaseException:
            self.files.discard(staged)
            raise
        return row

    async def _make_thumbnail(
        self, info: MediaInfo, width: int, height: int, method: str, animated: bool
    ) -> ThumbnailRow | None:
        assert info.path is not None
        async with self._thumbnailing:
            rendered = await asyncio.to_thread(
                render, str(info.path), info.content_type, width, height, method, animated,
                self.config.max_thumbnail_source_pixels,
            )
        if rendered is None:
            return None
        staged = self.files.stage_bytes(rendered.data)
        return await self.keep_thumbnail(info.origin, info.media_id, width, height, method, animated,
                                         rendered.content_type, staged)

    # ------------------------------------------------------------------ purging

    async def purge_remote(
        self, before_ms: int, *, file_grace_seconds: float = _PURGE_FILE_GRACE_SECONDS
    ) -> PurgeResult:
        """Delete cached remote media not accessed since ``before_ms`` (rows, thumbnails,
        and the files no row refers to any more and nothing touched in the last
        ``file_grace_seconds``)."""
        media = files = freed = 0
        grace = time.time() - file_grace_seconds
        while True:
            batch = await self.store.remote_not_accessed_since(before_ms)
            if not batch:
                break
            for origin, media_id in batch:
                hashes = await self.store.delete(origin, media_id)
                media += 1
                for sha in set(hashes):
                    if not await self.store.referenced(sha):
                        size = self.files.delete(sha, older_than=grace)
                        if size:
                            files += 1
                            freed += size
        return PurgeResult(media, files, freed)
