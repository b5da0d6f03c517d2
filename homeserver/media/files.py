"""The content-addressed file store: every file is named by the SHA-256 of its bytes, under
``<store>/content/ab/cd/<sha256>``, so identical uploads share one file.

Guarantees: bytes are streamed into a temporary file under ``<store>/tmp`` and hashed as
they arrive; only a complete file is renamed into place (``os.replace``, atomic on one file
system), so a reader never sees a partial file and a failed write leaves nothing behind but
what ``discard`` (always called on failure) removes. Files are never modified once in
place; deleting one is the purge's job (``MediaRepository.purge_remote``) once no row
refers to it.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from collections.abc import AsyncIterable
from dataclasses import dataclass
from pathlib import Path

from homeserver.media.errors import MediaTooLarge, UploadIncomplete

# Temporary files older than this are left-overs of a crash: removed at start.
_STALE_TMP_SECONDS = 3600


@dataclass(frozen=True, slots=True)
class StagedFile:
    """Bytes written and hashed, not yet in place."""

    tmp_path: Path
    sha256: str
    size: int


class MediaFiles:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.content = root / "content"
        self.tmp = root / "tmp"

    def prepare(self) -> None:
        """Make the directories (the store 0700: users' files are theirs and the
        operator's); remove temporary files a crash left behind."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.content.mkdir(mode=0o700, exist_ok=True)
        self.tmp.mkdir(mode=0o700, exist_ok=True)
        cutoff = time.time() - _STALE_TMP_SECONDS
        for entry in self.tmp.iterdir():
            try:
                if entry.stat().st_mtime < cutoff:
                    entry.unlink()
            except OSError:
                pass

    def path_for(self, sha256: str) -> Path:
        return self.content / sha256[:2] / sha256[2:4] / sha256

    async def stage(
        self, chunks: AsyncIterable[bytes], max_bytes: int, expected_size: int | None = None
    ) -> StagedFile:
        """Write ``chunks`` to a temporary file, hashing them. ``MediaTooLarge`` past
        ``max_bytes`` (or when ``expected_size`` says so before a byte is read),
        ``UploadIncomplete`` if the total differs from ``expected_size``; on any error the
        temporary file is gone."""
        if expected_size is not None and expected_size > max_bytes:
            raise MediaTooLarge(f"{expected_size} bytes is over the limit of {max_bytes}")
        self.tmp.mkdir(parents=True, exist_ok=True)
        tmp_path = self.tmp / f"upload-{secrets.token_hex(12)}"
        digest = hashlib.sha256()
        size = 0
        try:
            # Writes go to the page cache (microseconds per chunk): done on the event loop.
            with open(tmp_path, "xb") as out:  # noqa: ASYNC230 - see above
                async for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes:
                        raise MediaTooLarge(f"more than {max_bytes} bytes")
                    if expected_size is not None and size > expected_size:
                        raise UploadIncomplete("more bytes than Content-Length")
                    digest.update(chunk)
                    out.write(chunk)
            if expected_size is not None and size != expected_size:
                raise UploadIncomplete(f"{size} bytes received, {expected_size} declared")
        except BaseException:
            _unlink(tmp_path)
            raise
        return StagedFile(tmp_path, digest.hexdigest(), size)

    def stage_bytes(self, data: bytes) -> StagedFile:
        """A small file made in memory (a thumbnail) staged like an upload."""
        self.tmp.mkdir(parents=True, exist_ok=True)
        tmp_path = self.tmp / f"thumb-{secrets.token_hex(12)}"
        try:
            with open(tmp_path, "xb") as out:
                out.write(data)
        except BaseException:
            _unlink(tmp_path)
            raise
        return StagedFile(tmp_path, hashlib.sha256(data).hexdigest(), len(data))

    def commit(self, staged: StagedFile) -> Path:
        """Move a staged file into place (or drop it if the same bytes are there already,
        refreshing that file's time so that a concurrent purge leaves it alone)."""
        dest = self.path_for(staged.sha256)
        if dest.exists():
            try:
                os.utime(dest)
            except OSError:
                pass
            if dest.exists():
                _unlink(staged.tmp_path)
                return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged.tmp_path, dest)
        return dest

    def discard(self, staged: StagedFile) -> None:
        _unlink(staged.tmp_path)

    def delete(self, sha256: str, *, older_than: float | None = None) -> int:
        """Remove the file ``sha256``; its size, or 0 if absent (or touched after
        ``older_than``, a Unix time: an upload of the same bytes may be under way)."""
        path = self.path_for(sha256)
        try:
            st = path.stat()
            if older_than is not None and st.st_mtime >= older_than:
                return 0
            path.unlink()
        except FileNotFoundError:
            return 0
        return st.st_size


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
