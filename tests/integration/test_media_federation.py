"""Media over federation (issue 21), on both engines.

Two of our servers: B fetches A's media through A's authenticated federation endpoint
once, then serves it from its cache; thumbnails are made from the cached copy; A serves
only its own media and only to authenticated servers.

A foreign server (``tests/media_remote.py``) plays the old and the hostile remote: one
without the federation endpoint (legacy fallback, ``allow_remote=false``), one that
stalls (no more than the configured connections, a clean timeout), one whose media is too
large (nothing cached), one whose ``Location`` names a denied address (refused before any
connection is made)."""

from __future__ import annotations

import asyncio
import io
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image

from homeserver.errors import FederationRequestError
from homeserver.media.errors import MediaTooLarge, RemoteMediaTimeout, RemoteMediaUnavailable
from homeserver.media.multipart import Chunk, MediaHeaders, MultipartParser, boundary_of
from homeserver.media.remote import FederationMediaFetcher
from homeserver.media.repository import MediaRepository
from homeserver.server import RunningServer
from tests.clients import client_server, nio_user
from tests.conftest import DatabaseFactory
from tests.integration.test_media_client import V1, get, media_id_of
from tests.integration.test_media_client import upload as client_upload
from tests.integration.test_outbound_ip_policy import AcceptCounter
from tests.media_remote import MediaRemote, media_remote


def png(width: int = 300, height: int = 200) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (20, 120, 200)).save(buf, format="PNG")
    return buf.getvalue()


async def chunks(data: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def name(server: RunningServer) -> str:
    return server.services.config.server_name


def repo(server: RunningServer) -> MediaRepository:
    assert server.services.media is not None
    return server.services.media


def fetcher(server: RunningServer) -> FederationMediaFetcher:
    remote = repo(server).remote
    assert isinstance(remote, FederationMediaFetcher)
    return remote


def metric(server: RunningServer, metric_name: str, labels: dict[str, str]) -> float:
    return float(server.services.metrics.registry.get_sample_value(metric_name, labels) or 0.0)


def fetches(server: RunningServer, outcome: str) -> float:
    return metric(server, "hs_media_remote_fetches_total", {"outcome": outcome})


def files_in(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


async def upload(server: RunningServer, data: bytes, content_type: str = "image/png", media_id: str = "") -> str:
    media_id = media_id or "m" + os.urandom(8).hex()
    await repo(server).store_stream(name(server), media_id, content_type, "cat.png", chunks(data), 10 << 20,
                                    user_id=f"@alice:{name(server)}")
    return media_id


async def federation_get(frm: RunningServer, to: RunningServer, path: str) -> tuple[dict[str, Any], bytes]:
    """``frm``'s signed GET of ``to``'s federation media path, parsed: headers, media."""
    client = frm.services.federation_client
    async with client.stream(name(to), path) as resp:
        parser = MultipartParser(boundary_of(resp.headers.get("Content-Type")), max_media_bytes=10 << 20)
        events = parser.feed(await resp.read())
        parser.close()
    headers = next(e for e in events if isinstance(e, MediaHeaders))
    return ({"content_type": headers.content_type, "disposition": headers.content_disposition},
            b"".join(e.data for e in events if isinstance(e, Chunk)))


# ---------------------------------------------------------------- two of our servers


async def test_user_of_b_downloads_an_upload_of_a(pair: tuple[RunningServer, RunningServer]) -> None:
    """The issue's "done when": an image uploaded on A, downloaded with a 96x96 thumbnail
    by a client of B through B's authenticated media API (B fetching over federation)."""
    a, b = pair
    data = png(400, 300)
    async with nio_user(a, "alice") as alice, nio_user(b, "bob") as bob:
        status, body = await client_upload(a, alice.access_token, data, "image/png", "holiday.png")
        assert status == 200, body
        uri = body["content_uri"]
        assert uri.startswith(f"mxc://{name(a)}/")
        path = f"/{name(a)}/{media_id_of(uri)}"

        status, headers, got = await get(b, f"{V1}/download{path}", bob.access_token)
        assert (status, got) == (200, data)
        assert headers["Content-Type"] == "image/png"
        assert headers["Content-Disposition"] == 'inline; filename="holiday.png"'
        assert headers["X-Content-Type-Options"] == "nosniff"

        status, headers, thumb = await get(b, f"{V1}/thumbnail{path}?width=96&height=96&method=crop",
                                           bob.access_token)
        assert status == 200, thumb
        with Image.open(io.BytesIO(thumb)) as img:
            assert img.size == (96, 96)

        # Again: from B's cache; A served the media once.
        status, _, again = await get(b, f"{V1}/download{path}/other-name.png", bob.access_token)
        assert (status, again) == (200, data)
        assert metric(a, "hs_federation_media_served_total", {"kind": "download"}) == 1
        assert fetches(b, "fetched") == 1 and fetches(b, "cached") >= 2

        # Unknown remote media: 404; unauthenticated: 401.
        status, _, body_ = await get(b, f"{V1}/download/{name(a)}/doesnotexist", bob.access_token)
        assert status == 404, body_
        status, _, _ = await get(b, f"{V1}/download{path}")
        assert status == 401


async def test_remote_media_fetched_once_then_served_from_cache(pair: tuple[RunningServer, RunningServer]) -> None:
    a, b = pair
    data = png()
    media_id = await upload(a, data)

    info = await fetcher(b).fetch(name(a), media_id)
    assert info is not None and info.remote and info.path is not None
    assert info.path.read_bytes() == data
    assert (info.content_type, info.upload_name) == ("image/png", "cat.png")
    assert metric(a, "hs_federation_media_served_total", {"kind": "download"}) == 1

    # Again, and as a 96x96 thumbnail: from B's cache, A is not asked again.
    again = await fetcher(b).fetch(name(a), media_id)
    assert again is not None and again.sha256 == info.sha256
    thumb = await fetcher(b).fetch_thumbnail(name(a), media_id, 96, 96, "crop", False)
    assert thumb is not None
    with Image.open(thumb.path) as img:
        assert img.size == (96, 96)
    assert metric(a, "hs_federation_media_served_total", {"kind": "download"}) == 1
    assert (fetches(b, "fetched"), fetches(b, "cached")) == (1, 2)

    # Concurrent first requests for one piece of media share one fetch.
    other = await upload(a, png(50, 50))
    results = await asyncio.gather(*(fetcher(b).fetch(name(a), other) for _ in range(8)))
    assert len({r.sha256 for r in results if r is not None}) == 1
    assert metric(a, "hs_federation_media_served_total", {"kind": "download"}) == 2

    # A's thumbnail endpoint serves A's media to B.
    headers, body = await federation_get(b, a, f"/_matrix/federation/v1/media/thumbnail/{media_id}"
                                         "?width=32&height=32&method=crop")
    assert headers["content_type"] in ("image/png", "image/jpeg")
    with Image.open(io.BytesIO(body)) as img:
        assert img.size == (32, 32)
    headers, body = await federation_get(b, a, f"/_matrix/federation/v1/media/download/{media_id}")
    assert body == data and headers["content_type"] == "image/png"
    assert headers["disposition"] == 'inline; filename="cat.png"'


async def test_only_our_own_media_and_only_to_servers(pair: tuple[RunningServer, RunningServer]) -> None:
    a, b = pair
    media_id = await upload(a, png())
    assert await fetcher(b).fetch(name(a), media_id) is not None
    client = a.services.federation_client

    async def status_of(path: str, to: RunningServer = b) -> tuple[int | None, str | None]:
        try:
            async with client.stream(name(to), path):
                return 200, None
        except FederationRequestError as e:
            return e.status, e.errcode

    p = "/_matrix/federation/v1/media"
    # B does not serve its cached copy of A's media, nor anything unknown.
    assert await status_of(f"{p}/download/{media_id}") == (404, "M_NOT_FOUND")
    assert await status_of(f"{p}/thumbnail/{media_id}?width=32&height=32") == (404, "M_NOT_FOUND")
    assert await status_of(f"{p}/download/nope") == (404, "M_NOT_FOUND")
    assert await status_of(f"{p}/download/bad%20id") == (404, "M_NOT_FOUND")
    # Bad thumbnail parameters.
    for query in ("", "?width=32", "?width=0&height=5", "?width=x&height=5", "?width=5&height=5&method=zoom",
                  "?width=5&height=5&animated=maybe"):
        status, errcode = await status_of(f"{p}/thumbnail/{media_id}{query}", a)
        assert status == 400 and errcode in ("M_MISSING_PARAM", "M_INVALID_PARAM"), query
    not_image = await upload(a, b"just text", "text/plain")
    assert await status_of(f"{p}/thumbnail/{not_image}?width=32&height=32", a) == (400, "M_UNKNOWN")
    # Without an X-Matrix signature: 401.
    url = f"https://127.0.0.1:{a.federation_port}{p}/download/{media_id}"
    async with aiohttp.ClientSession() as session, session.get(url, ssl=False) as resp:
        assert resp.status == 401
    # Our own server name is never fetched remotely.
    assert await fetcher(a).fetch(name(a), media_id) is None


# ---------------------------------------------------------------- foreign servers


@pytest.fixture
async def ours(db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]) -> AsyncIterator[RunningServer]:
    extra = {
        "media": {"max_upload_size": 20_000,
                  "remote_fetch": {"timeout": 2.0, "max_per_host": 2, "max_concurrent": 4}},
        "federation": {"ip_range_denylist": ["127.0.0.2/32"]},
    }
    async with client_server(db_factory, tmp_path / "ours", test_ca, extra) as server:
        yield server


@pytest.fixture
async def foreign(tmp_path: Path, test_ca: tuple[Path, Path]) -> AsyncIterator[MediaRemote]:
    async with media_remote(test_ca, tmp_path / "foreign") as remote:
        yield remote


async def test_old_server_gets_the_legacy_path(ours: RunningServer, foreign: MediaRemote) -> None:
    data = png(64, 64)
    foreign.media["old1"] = ("image/png", data)
    foreign.mode = "unrecognized"
    info = await fetcher(ours).fetch(foreign.server_name, "old1")
    assert info is not None and info.path is not None and info.path.read_bytes() == data
    assert info.upload_name == "old.bin"
    assert foreign.requests == {"federation": 1, "legacy": 1}
    assert foreign.queries[-1]["allow_remote"] == "false"
    assert foreign.queries[-1]["allow_redirect"] == "true"
    # Cached: no further request; an unknown ID: None (the client API's 404).
    assert await fetcher(ours).fetch(foreign.server_name, "old1") is not None
    assert await fetcher(ours).fetch(foreign.server_name, "gone") is None
    assert foreign.requests == {"federation": 2, "legacy": 2}
    assert fetches(ours, "not_found") == 1


async def test_stalling_server_holds_few_connections_and_times_out(
    ours: RunningServer, foreign: MediaRemote
) -> None:
    foreign.mode = "stall"
    started = time.monotonic()
    gathered = asyncio.gather(
        *(fetcher(ours).fetch(foreign.server_name, f"slow{i}") for i in range(6)), return_exceptions=True
    )
    await asyncio.sleep(1.0)  # half the timeout: four wait for a slot, two hold a connection
    assert (foreign.in_progress, foreign.peak) == (2, 2)  # media.remote_fetch.max_per_host
    assert fetcher(ours).slots.pending == 6 and fetcher(ours).slots.running == 2
    results = await gathered
    elapsed = time.monotonic() - started
    assert all(isinstance(r, RemoteMediaTimeout) for r in results), results
    assert 1.9 < elapsed < 6.0
    assert fetches(ours, "timeout") == 6
    assert fetcher(ours).slots.pending == 0 and fetcher(ours).slots.hosts_tracked() == 0

    # Through the client API: a clean Matrix error, within the timeout.
    async with nio_user(ours, "carol") as carol:
        started = time.monotonic()
        status, _, body = await get(ours, f"{V1}/download/{foreign.server_name}/slow9", carol.access_token)
        assert status == 504 and b"M_NOT_YET_UPLOADED" in body
        assert time.monotonic() - started < 4.0


@pytest.mark.parametrize("mode", ["federation", "unrecognized", "chunked"])
async def test_oversize_remote_media_is_refused_and_nothing_cached(
    ours: RunningServer, foreign: MediaRemote, mode: str
) -> None:
    foreign.mode = "federation" if mode == "federation" else "unrecognized"
    foreign.chunked = mode == "chunked"  # the legacy answer has no Content-Length
    foreign.media["big"] = ("application/octet-stream", os.urandom(20_001 if mode != "chunked" else 60_000))
    before = files_in(repo(ours).files.root)
    with pytest.raises(MediaTooLarge):
        await fetcher(ours).fetch(foreign.server_name, "big")
    assert await repo(ours).get(foreign.server_name, "big") is None
    assert files_in(repo(ours).files.root) == before
    assert fetches(ours, "too_large") == 1
    async with nio_user(ours, "dave") as dave:
        status, _, body = await get(ours, f"{V1}/download/{foreign.server_name}/big", dave.access_token)
        assert status == 502 and b"M_TOO_LARGE" in body
    assert files_in(repo(ours).files.root) == before


async def test_location_is_followed_once_and_only_to_allowed_addresses(
    ours: RunningServer, foreign: MediaRemote
) -> None:
    data = png(40, 40)
    foreign.media["r1"] = ("image/png", data)
    foreign.mode = "redirect"
    foreign.location = f"{foreign.base}/cdn/r1"
    info = await fetcher(ours).fetch(foreign.server_name, "r1")
    assert info is not None and info.path is not None and info.path.read_bytes() == data
    assert foreign.requests == {"federation": 1, "cdn": 1}

    async with AcceptCounter("127.0.0.2") as denied:
        for i, location in enumerate([
            f"https://127.0.0.2:{denied.port}/cdn/r1",  # in federation.ip_range_denylist
            "https://169.254.169.254/latest/meta-data",  # link-local: denied by default
            f"http://127.0.0.1:{foreign.port}/cdn/r1",  # not https
            "file:///etc/passwd",
        ]):
            foreign.location = location
            foreign.media[f"x{i}"] = ("image/png", data)
            with pytest.raises(RemoteMediaUnavailable):
                await fetcher(ours).fetch(foreign.server_name, f"x{i}")
            assert await repo(ours).get(foreign.server_name, f"x{i}") is None
        assert denied.accepted == 0
    assert fetches(ours, "refused") == 4
    assert foreign.requests["cdn"] == 1


@pytest.mark.parametrize("mode", ["not_multipart", "truncated", "broken"])
async def test_bad_answers_are_errors_and_nothing_cached(ours: RunningServer, foreign: MediaRemote, mode: str) -> None:
    foreign.mode = mode
    foreign.media["bad"] = ("image/png", png(30, 30))
    before = files_in(repo(ours).files.root)
    with pytest.raises(RemoteMediaUnavailable):
        await fetcher(ours).fetch(foreign.server_name, "bad")
    assert await repo(ours).get(foreign.server_name, "bad") is None
    assert files_in(repo(ours).files.root) == before
    assert fetches(ours, "error") == 1
    assert foreign.requests == {"federation": 1}  # a 500 is not a reason to try the legacy path


@pytest.mark.parametrize("mode", ["federation", "unrecognized"])
async def test_thumbnail_of_media_we_cannot_read_comes_from_the_origin(
    ours: RunningServer, foreign: MediaRemote, mode: str
) -> None:
    foreign.mode = mode
    foreign.media["clip"] = ("video/mp4", os.urandom(5000))
    foreign.thumbnails["clip"] = ("image/png", png(96, 54))
    thumb = await fetcher(ours).fetch_thumbnail(foreign.server_name, "clip", 96, 96, "scale", False)
    assert thumb is not None and thumb.content_type == "image/png"
    assert thumb.path.read_bytes() == foreign.thumbnails["clip"][1]
    asked = sum(foreign.requests.values())
    again = await fetcher(ours).fetch_thumbnail(foreign.server_name, "clip", 96, 96, "scale", False)
    assert again is not None and again.sha256 == thumb.sha256
    assert sum(foreign.requests.values()) == asked  # kept beside the cached media
    # The purge forgets it with the media.
    result = await repo(ours).purge_remote(int(time.time() * 1000) + 1000, file_grace_seconds=0)
    assert result.media == 1
    assert await repo(ours).store.get_thumbnail(foreign.server_name, "clip", 96, 96, "scale", False) is None
