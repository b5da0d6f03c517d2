"""A foreign media server whose ``Location`` names a host that IDNA refuses (``a..b``,
``xn--``, a 64-character label), on both engines (helper hostile1): yarl or aiohttp raise
UnicodeError, a ValueError that the downloader did not catch, so the client got a 500. It
is now a failed fetch: 502 M_UNKNOWN, nothing cached."""

from __future__ import annotations

import aiohttp

from homeserver.server import RunningServer
from tests.clients import base_url, nio_user
from tests.integration.test_media_federation import foreign, ours, png  # noqa: F401  (fixtures)
from tests.media_remote import MediaRemote


async def test_unencodable_location_is_a_failed_fetch(ours: RunningServer, foreign: MediaRemote) -> None:  # noqa: F811
    foreign.mode = "redirect"
    async with nio_user(ours) as alice:
        for i, host in enumerate(("a..b", "xn--", "a" * 64 + ".example")):
            foreign.location = f"https://{host}/cdn/x"
            foreign.media[f"x{i}"] = ("image/png", png(10, 10))
            async with aiohttp.ClientSession() as s, s.get(
                f"{base_url(ours)}/_matrix/client/v1/media/download/{foreign.server_name}/x{i}",
                headers={"Authorization": f"Bearer {alice.access_token}"},
            ) as r:
                body = await r.json()
                assert r.status == 502 and body["errcode"] == "M_UNKNOWN", (host, r.status, body)
            assert ours.services.media is not None
            assert await ours.services.media.get(foreign.server_name, f"x{i}") is None
