"""Media between Synapse and ours, over the authenticated federation media endpoints:

- a Synapse user downloads our user's upload (and a thumbnail of it) through Synapse's own
  ``/_matrix/client/v1/media``: Synapse fetches it from our
  ``/_matrix/federation/v1/media/download``, and parses our multipart answer;
- our user downloads a Synapse user's upload through our ``/_matrix/client/v1/media``: we
  fetch it from Synapse's federation endpoint and parse Synapse's multipart answer, then
  serve it (and a 96x96 thumbnail made from it) from our cache.
"""

from __future__ import annotations

import io
from typing import Any

import aiohttp
import pytest
from PIL import Image

from tests.interop.client import MatrixClient
from tests.interop.conftest import OurServer, new_user
from tests.interop.synapse import SynapseServer

pytestmark = pytest.mark.interop

V1 = "/_matrix/client/v1/media"


def png(width: int, height: int, colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, format="PNG")
    return buf.getvalue()


async def upload(http: aiohttp.ClientSession, user: MatrixClient, data: bytes, filename: str) -> str:
    async with http.post(
        f"{user.base_url}/_matrix/media/v3/upload", params={"filename": filename}, data=data,
        headers={"Authorization": f"Bearer {user.token}", "Content-Type": "image/png"},
        timeout=aiohttp.ClientTimeout(total=30),
    ) as r:
        body = await r.json(content_type=None)
        assert r.status == 200, body
    uri = body["content_uri"]
    assert isinstance(uri, str) and uri.startswith("mxc://")
    return uri[len("mxc://"):]  # server/mediaId


async def download(http: aiohttp.ClientSession, user: MatrixClient, path: str) -> tuple[int, Any, bytes]:
    async with http.get(
        f"{user.base_url}{path}", headers={"Authorization": f"Bearer {user.token}"},
        timeout=aiohttp.ClientTimeout(total=60),
    ) as r:
        return r.status, r.headers, await r.read()


async def test_synapse_downloads_ours_and_we_download_synapses(
    synapse: SynapseServer, ours: tuple[OurServer, OurServer], http: aiohttp.ClientSession,
) -> None:
    a, _ = ours
    alice = await new_user(http, a.client_url)
    sam = await new_user(http, synapse.client_url)

    # 1. Synapse fetches our media over federation for its user.
    ours_png = png(320, 200, (200, 40, 40))
    ref = await upload(http, alice, ours_png, "from-ours.png")
    assert ref.startswith(a.name + "/")
    status, headers, body = await download(http, sam, f"{V1}/download/{ref}")
    assert status == 200, body[:300]
    assert body == ours_png
    assert headers["Content-Type"].startswith("image/png")
    served = a.server.services.metrics.registry.get_sample_value(
        "hs_federation_media_served_total", {"kind": "download"})
    assert served is not None and served >= 1
    status, _, thumb = await download(http, sam, f"{V1}/thumbnail/{ref}?width=96&height=96&method=crop")
    assert status == 200, thumb[:300]
    with Image.open(io.BytesIO(thumb)) as img:
        assert max(img.size) <= 200

    # 2. We fetch Synapse's media over federation for our user.
    synapse_png = png(300, 300, (40, 200, 40))
    ref = await upload(http, sam, synapse_png, "from-synapse.png")
    assert ref.startswith(synapse.server_name + "/")
    status, headers, body = await download(http, alice, f"{V1}/download/{ref}")
    assert status == 200, body[:300]
    assert body == synapse_png
    assert headers["Content-Type"] == "image/png"
    assert "from-synapse.png" in headers["Content-Disposition"]
    # Through Synapse's authenticated federation endpoint, not the deprecated fallback.
    media_id = ref.split("/", 1)[1]
    assert f"/_matrix/federation/v1/media/download/{media_id}" in synapse.logs(tail=5000)
    assert f"/_matrix/media/v3/download/{ref}" not in synapse.logs(tail=5000)
    status, _, thumb = await download(http, alice, f"{V1}/thumbnail/{ref}?width=96&height=96&method=crop")
    assert status == 200, thumb[:300]
    with Image.open(io.BytesIO(thumb)) as img:
        assert img.size == (96, 96)
    registry = a.server.services.metrics.registry
    assert registry.get_sample_value("hs_media_remote_fetches_total", {"outcome": "fetched"}) == 1
    assert (registry.get_sample_value("hs_media_remote_fetches_total", {"outcome": "cached"}) or 0) >= 1
