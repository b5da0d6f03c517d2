"""The media store: metadata of the media repository (storage/schema/0015_media.sql).

One row per (origin, media_id) in ``media``: local uploads and cached remote media; a row
whose ``sha256`` is NULL is an asynchronous upload still waiting for its bytes. One row per
made thumbnail in ``media_thumbnails``. The bytes themselves are files named by their
SHA-256 (``homeserver/media/files.py``); this module only says which hashes rows refer to.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from homeserver.storage.database import Database, Row, is_unique_violation

_MEDIA_COLUMNS = (
    "origin, media_id, content_type, upload_name, size, sha256, created_ts, last_access_ts,"
    " user_id, remote, unused_expires_ts"
)
_THUMB_COLUMNS = "origin, media_id, width, height, method, animated, content_type, size, sha256, created_ts"


@dataclass(frozen=True, slots=True)
class MediaRow:
    origin: str
    media_id: str
    content_type: str
    upload_name: str | None
    size: int
    sha256: str | None  # None: an asynchronous upload that has no bytes yet
    created_ts: int
    last_access_ts: int
    user_id: str | None
    remote: bool
    unused_expires_ts: int | None


@dataclass(frozen=True, slots=True)
class ThumbnailRow:
    origin: str
    media_id: str
    width: int
    height: int
    method: str
    animated: bool
    content_type: str
    size: int
    sha256: str
    created_ts: int


def _media(r: Row) -> MediaRow:
    return MediaRow(
        r[0], r[1], r[2], r[3], int(r[4]), r[5], int(r[6]), int(r[7]), r[8], bool(r[9]),
        None if r[10] is None else int(r[10]),
    )


def _thumb(r: Row) -> ThumbnailRow:
    return ThumbnailRow(r[0], r[1], int(r[2]), int(r[3]), r[4], bool(r[5]), r[6], int(r[7]), r[8], int(r[9]))


class MediaStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # ------------------------------------------------------------------ media rows

    async def get(self, origin: str, media_id: str) -> MediaRow | None:
        row = await self.db.fetchone(
            f"SELECT {_MEDIA_COLUMNS} FROM media WHERE origin = ? AND media_id = ?", origin, media_id
        )
        return None if row is None else _media(row)

    async def insert(self, row: MediaRow) -> bool:
        """Add a row with its bytes; False if (origin, media_id) is taken already."""
        try:
            await self.db.execute(
                f"INSERT INTO media ({_MEDIA_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row.origin, row.media_id, row.content_type, row.upload_name, row.size, row.sha256,
                row.created_ts, row.last_access_ts, row.user_id, int(row.remote), row.unused_expires_ts,
            )
        except Exception as e:
            if is_unique_violation(e):
                return False
            raise
        return True

    async def upsert_remote(self, row: MediaRow) -> None:
        """Add or refresh the cached copy of a remote server's media."""
        await self.db.execute(
            f"INSERT INTO media ({_MEDIA_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (origin, media_id) DO UPDATE SET content_type = excluded.content_type,"
            " upload_name = excluded.upload_name, size = excluded.size, sha256 = excluded.sha256,"
            " last_access_ts = excluded.last_access_ts",
            row.origin, row.media_id, row.content_type, row.upload_name, row.size, row.sha256,
            row.created_ts, row.last_access_ts, row.user_id, int(row.remote), row.unused_expires_ts,
        )

    async def complete_pending(
        self, origin: str, media_id: str, user_id: str, content_type: str, upload_name: str | None,
        size: int, sha256: str, now_ms: int,
    ) -> bool:
        """Give an asynchronous upload its bytes: only ``user_id``'s, only once, only
        before it expires. False if no such pending row."""
        changed = await self.db.execute(
            "UPDATE media SET content_type = ?, upload_name = ?, size = ?, sha256 = ?, created_ts = ?,"
            " last_access_ts = ?, unused_expires_ts = NULL"
            " WHERE origin = ? AND media_id = ? AND user_id = ? AND sha256 IS NULL AND unused_expires_ts > ?",
            content_type, upload_name, size, sha256, now_ms, now_ms, origin, media_id, user_id, now_ms,
        )
        return changed > 0

    async def count_pending(self, user_id: str, now_ms: int) -> int:
        value = await self.db.fetchval(
            "SELECT COUNT(*) FROM media WHERE user_id = ? AND sha256 IS NULL AND unused_expires_ts > ?",
            user_id, now_ms,
        )
        return int(value or 0)

    async def delete_expired_pending(self, now_ms: int) -> int:
        return await self.db.execute(
            "DELETE FROM media WHERE sha256 IS NULL AND unused_expires_ts <= ?", now_ms
        )

    async def touch(self, origin: str, media_id: str, now_ms: int) -> None:
        await self.db.execute(
            "UPDATE media SET last_access_ts = ? WHERE origin = ? AND media_id = ?", now_ms, origin, media_id
        )

    async def remote_not_accessed_since(self, before_ms: int, limit: int = 1000) -> list[tuple[str, str]]:
        rows = await self.db.fetchall(
            "SELECT origin, media_id FROM media WHERE remote = 1 AND last_access_ts < ?"
            " ORDER BY last_access_ts LIMIT ?",
            before_ms, limit,
        )
        return [(r[0], r[1]) for r in rows]

    async def delete(self, origin: str, media_id: str) -> list[str]:
        """Delete one media row and its thumbnails' rows; the hashes they referred to."""
        async with self.db.transaction() as conn:
            rows = await conn.fetchall(
                "SELECT sha256 FROM media WHERE origin = ? AND media_id = ? AND sha256 IS NOT NULL"
                " UNION SELECT sha256 FROM media_thumbnails WHERE origin = ? AND media_id = ?",
                origin, media_id, origin, media_id,
            )
            await conn.execute("DELETE FROM media_thumbnails WHERE origin = ? AND media_id = ?", origin, media_id)
            await conn.execute("DELETE FROM media WHERE origin = ? AND media_id = ?", origin, media_id)
        return [r[0] for r in rows]

    async def referenced(self, sha256: str) -> bool:
        """Whether any media or thumbnail row refers to the file ``sha256``."""
        value = await self.db.fetchval(
            "SELECT 1 FROM media WHERE sha256 = ? UNION ALL SELECT 1 FROM media_thumbnails WHERE sha256 = ?"
            " LIMIT 1",
            sha256, sha256,
        )
        return value is not None

    async def all_hashes(self) -> set[str]:
        rows = await self.db.fetchall(
            "SELECT sha256 FROM media WHERE sha256 IS NOT NULL UNION SELECT sha256 FROM media_thumbnails"
        )
        return {r[0] for r in rows}

    # ------------------------------------------------------------------ thumbnails

    async def get_thumbnail(
        self, origin: str, media_id: str, width: int, height: int, method: str, animated: bool
    ) -> ThumbnailRow | None:
        row = await self.db.fetchone(
            f"SELECT {_THUMB_COLUMNS} FROM media_thumbnails WHERE origin = ? AND media_id = ?"
            " AND width = ? AND height = ? AND method = ? AND animated = ?",
            origin, media_id, width, height, method, int(animated),
        )
        return None if row is None else _thumb(row)

    async def put_thumbnail(self, row: ThumbnailRow) -> None:
        await self.db.execute(
            f"INSERT INTO media_thumbnails ({_THUMB_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (origin, media_id, width, height, method, animated) DO NOTHING",
            row.origin, row.media_id, row.width, row.height, row.method, int(row.animated),
            row.content_type, row.size, row.sha256, row.created_ts,
        )

    async def thumbnails(self, origin: str, media_id: str) -> Sequence[ThumbnailRow]:
        rows = await self.db.fetchall(
            f"SELECT {_THUMB_COLUMNS} FROM media_thumbnails WHERE origin = ? AND media_id = ?", origin, media_id
        )
        return [_thumb(r) for r in rows]
