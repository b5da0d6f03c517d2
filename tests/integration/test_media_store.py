"""The media repository's storage on both engines: streamed uploads land as one
content-addressed file (identical bytes share it) and one row; an oversize or wrong-length
upload leaves neither; asynchronous uploads are the creator's, once; thumbnails are made
once and kept; purging remote media removes rows and the files nothing refers to."""

from __future__ import annotations

import asyncio
import io
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from PIL import Image

from homeserver.cli import main
from homeserver.config import MediaConfig, load_config
from homeserver.media.errors import (
    CannotThumbnail,
    MediaExists,
    MediaNotFound,
    MediaTooLarge,
    NotCreator,
    UploadIncomplete,
)
from homeserver.media.repository import MediaRepository, store_path
from homeserver.storage.database import Database, open_database
from homeserver.storage.media import MediaStore
from homeserver.storage.migrations import migrate
from homeserver.util.clock import FakeClock, now_ms
from tests.conftest import DatabaseFactory

US = "a.test"


async def chunks(data: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


def png(width: int = 300, height: int = 200) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def files_in(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.fixture
async def repo(db: Database, tmp_path: Path) -> MediaRepository:
    await migrate(db)
    r = MediaRepository(US, MediaConfig(), tmp_path / "media", MediaStore(db), clock=FakeClock())
    r.files.prepare()
    return r


async def test_upload_dedup_and_get(repo: MediaRepository, tmp_path: Path) -> None:
    data = os.urandom(5000)
    a = await repo.store_stream(US, "A", "application/x-test", "a.bin", chunks(data), 10_000, user_id="@u:a.test")
    b = await repo.store_stream(US, "B", "text/plain", None, chunks(data), 10_000, user_id="@u:a.test")
    assert a.sha256 == b.sha256 and a.path == b.path and a.size == 5000
    assert a.path is not None and a.path.read_bytes() == data
    assert len(files_in(tmp_path / "media" / "content")) == 1
    got = await repo.get(US, "A")
    assert got is not None and got.upload_name == "a.bin" and not got.remote and got.user_id == "@u:a.test"
    assert await repo.get(US, "nope") is None
    with pytest.raises(MediaExists):
        await repo.store_stream(US, "A", "text/plain", None, chunks(b"x"), 10)


@pytest.mark.parametrize("case", ["too_large", "short", "long"])
async def test_failed_upload_leaves_nothing(repo: MediaRepository, tmp_path: Path, case: str) -> None:
    data = os.urandom(3000)
    expected = {"too_large": None, "short": 4000, "long": 2000}[case]
    error = MediaTooLarge if case == "too_large" else UploadIncomplete
    with pytest.raises(error):
        await repo.store_stream(US, "X", "a/b", None, chunks(data), 2500 if case == "too_large" else 10_000,
                                expected_size=expected)
    assert files_in(tmp_path / "media") == []
    assert await repo.get(US, "X") is None


async def test_async_upload(repo: MediaRepository) -> None:
    media_id, _expires = await repo.create_pending("@u:a.test")
    pending = await repo.get(US, media_id)
    assert pending is not None and pending.pending and pending.path is None
    with pytest.raises(NotCreator):
        await repo.complete_pending(media_id, "@v:a.test", "a/b", None, chunks(b"x"), 10)
    info = await repo.complete_pending(media_id, "@u:a.test", "a/b", "n", chunks(b"hello"), 10)
    assert info.size == 5 and not info.pending
    with pytest.raises(MediaExists):
        await repo.complete_pending(media_id, "@u:a.test", "a/b", None, chunks(b"x"), 10)
    # Expiry: an unused ID is gone after media.unused_expiry_seconds.
    other, _ = await repo.create_pending("@u:a.test")
    assert isinstance(repo.clock, FakeClock)
    await repo.clock.advance(MediaConfig().unused_expiry_seconds + 1)
    assert await repo.get(US, other) is None
    with pytest.raises(MediaNotFound):
        await repo.complete_pending(other, "@u:a.test", "a/b", None, chunks(b"x"), 10)


async def test_thumbnails_made_once(repo: MediaRepository, tmp_path: Path) -> None:
    await repo.store_stream(US, "IMG", "image/png", "p.png", chunks(png()), 10**6)
    thumb = await repo.thumbnail(US, "IMG", 96, 96, "crop")
    assert thumb is not None and (thumb.width, thumb.height, thumb.method) == (96, 96, "crop")
    with Image.open(thumb.path) as im:
        assert im.size == (96, 96)
    again = await repo.thumbnail(US, "IMG", 90, 90, "crop")
    assert again == thumb
    scaled = await repo.thumbnail(US, "IMG", 320, 240, "scale")
    assert scaled is not None
    with Image.open(scaled.path) as im:
        assert im.size == (300, 200)  # never enlarged
    assert await repo.thumbnail(US, "missing", 32, 32, "crop") is None


async def test_purge_remote(repo: MediaRepository, tmp_path: Path) -> None:
    shared = os.urandom(100)
    await repo.store_stream("b.test", "R1", "image/png", None, chunks(png()), 10**6)
    await repo.thumbnail("b.test", "R1", 32, 32, "crop")
    await repo.store_stream("b.test", "R2", "a/b", None, chunks(shared), 10**6)
    await repo.store_stream(US, "L", "a/b", None, chunks(shared), 10**6)  # same bytes, local
    assert isinstance(repo.clock, FakeClock)
    await repo.clock.advance(10)
    result = await repo.purge_remote(repo.clock.time_ms(), file_grace_seconds=0)
    assert result.media == 2 and result.files == 2  # the image and its thumbnail
    assert await repo.get("b.test", "R1") is None and await repo.get("b.test", "R2") is None
    local = await repo.get(US, "L")
    assert local is not None and local.path is not None and local.path.read_bytes() == shared
    assert len(files_in(tmp_path / "media" / "content")) == 1


async def test_purge_remote_cli(db_factory: DatabaseFactory, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    """``homeserver media purge-remote``: remote media not accessed for --before goes (rows
    and files), recently accessed and local media stay; counts printed."""
    settings = await db_factory.new_settings()
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump({
        "server_name": US, "signing_key_path": "signing.key", "data_dir": str(tmp_path), "database": settings,
        "listeners": {"federation": {"tls": False}},
    }))
    config = load_config(config_path)
    db = await open_database(settings["engine"], path=settings.get("path"), dsn=settings.get("dsn"))
    try:
        await migrate(db)
        old = FakeClock(start_ms=now_ms() - 40 * 86400 * 1000)
        repo = MediaRepository.open(config, db, clock=old)
        await repo.store_stream("b.test", "OLD", "a/b", None, chunks(b"old bytes"), 100)
        await repo.store_stream(US, "LOCAL", "a/b", None, chunks(b"local bytes"), 100)
        repo.clock = FakeClock(start_ms=now_ms())
        await repo.store_stream("b.test", "NEW", "a/b", None, chunks(b"new bytes"), 100)
        for path in files_in(store_path(config)):  # written long ago (the purge spares fresh files)
            os.utime(path, (0, 0))
    finally:
        await db.close()
    status = await asyncio.to_thread(main, ["media", "purge-remote", "-c", str(config_path), "--before", "30d",
                                            "--json"])
    assert status == 0
    assert json.loads(capsys.readouterr().out) == {"media": 1, "files": 1, "bytes": len(b"old bytes")}
    names = sorted(p.read_bytes() for p in files_in(store_path(config) / "content"))
    assert names == [b"local bytes", b"new bytes"]
    assert await asyncio.to_thread(main, ["media", "purge-remote", "-c", str(config_path), "--before", "soon"]) == 1


def gif(frames: int) -> bytes:
    images = [Image.new("RGB", (120, 80), (i * 40 % 256, 0, 0)) for i in range(frames)]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=50, loop=0)
    return buf.getvalue()


async def test_animated_thumbnails_and_metrics(repo: MediaRepository, tmp_path: Path) -> None:
    """animated=true on an animated GIF: an animated WebP; animated=false: the first frame
    as PNG; a JPEG asked animated is a plain JPEG thumbnail. Uploads are counted."""
    await repo.store_stream(US, "GIF", "image/gif", None, chunks(gif(4)), 10**6)
    moving = await repo.thumbnail(US, "GIF", 32, 32, "crop", animated=True)
    assert moving is not None and moving.content_type == "image/webp" and moving.animated
    with Image.open(moving.path) as im:
        assert getattr(im, "n_frames", 1) == 4 and im.size == (32, 32)
    still = await repo.thumbnail(US, "GIF", 32, 32, "crop", animated=False)
    assert still is not None and still.content_type == "image/png" and not still.animated
    buf = io.BytesIO()
    Image.new("RGB", (50, 50)).save(buf, format="JPEG")
    await repo.store_stream(US, "JPG", "image/jpeg", None, chunks(buf.getvalue()), 10**6)
    jpeg = await repo.thumbnail(US, "JPG", 32, 32, "scale", animated=True)
    assert jpeg is not None and jpeg.content_type == "image/jpeg" and not jpeg.animated
    # A file that claims to be an image but is not: no thumbnail.
    await repo.store_stream(US, "FAKE", "image/png", None, chunks(b"not a png"), 10**6)
    with pytest.raises(CannotThumbnail):
        await repo.thumbnail(US, "FAKE", 32, 32, "crop")
    uploads = repo.metrics.registry.get_sample_value("hs_media_uploads_total", {"kind": "local"})
    assert uploads == 3
    assert oct(os.stat(tmp_path / "media").st_mode & 0o777) == oct(0o700)


async def test_recached_remote_media_drops_its_old_file(repo: MediaRepository, tmp_path: Path) -> None:
    first = await repo.store_stream("b.test", "R", "a/b", None, chunks(b"first copy"), 100)
    assert first.path is not None
    os.utime(first.path, (0, 0))  # cached long ago
    second = await repo.store_stream("b.test", "R", "a/b", None, chunks(b"second copy"), 100)
    assert second.path is not None and second.path.read_bytes() == b"second copy"
    assert files_in(tmp_path / "media" / "content") == [second.path]
    got = await repo.get("b.test", "R")
    assert got is not None and got.sha256 == second.sha256 and got.remote
