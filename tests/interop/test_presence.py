"""Presence with a real Synapse (presence enabled on it, which the shared Synapse has not):
our user's presence reaches Synapse's user (GET /status and /sync), and Synapse's user's
presence reaches ours."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.interop.client import ClientError, MatrixClient
from tests.interop.conftest import OurServer, new_user
from tests.interop.synapse import SynapseServer

pytestmark = pytest.mark.interop

WITHIN = 30.0


@pytest.fixture
def presence_synapse(synapse_python: Path, tmp_path: Path, test_ca: tuple[Path, Path]) -> Iterator[SynapseServer]:
    server = SynapseServer(synapse_python, tmp_path / "synapse", test_ca, extra={"presence": {"enabled": True}})
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def status_of(client: MatrixClient, user_id: str) -> dict[str, Any] | None:
    try:
        body: dict[str, Any] = await client.request("GET", f"/_matrix/client/v3/presence/{user_id}/status")
        return body
    except ClientError:
        return None


async def test_presence_both_ways_with_synapse(
    presence_synapse: SynapseServer, ours: tuple[OurServer, OurServer], http: aiohttp.ClientSession
) -> None:
    synapse = presence_synapse
    a, _ = ours
    s_user = await new_user(http, synapse.client_url)
    o_user = await new_user(http, a.client_url)
    room_id = await s_user.create_room("10", name="presence")
    assert await o_user.join(room_id, [synapse.server_name]) == room_id
    await s_user.wait_for_membership(room_id, o_user.user_id, "join")

    # Ours -> Synapse.
    await o_user.request("PUT", f"/_matrix/client/v3/presence/{o_user.user_id}/status",
                         json={"presence": "online", "status_msg": "from ours"})
    deadline = time.monotonic() + WITHIN
    seen_in_sync = False
    while True:
        resp = await s_user.sync()
        for event in resp.get("presence", {}).get("events", []):
            if event["sender"] == o_user.user_id and event["content"].get("status_msg") == "from ours":
                seen_in_sync = True
        status = await status_of(s_user, o_user.user_id)
        if seen_in_sync and status is not None and status.get("status_msg") == "from ours":
            break
        assert time.monotonic() < deadline, (status, seen_in_sync)
    assert status["presence"] == "online"

    # Synapse -> ours.
    await s_user.request("PUT", f"/_matrix/client/v3/presence/{s_user.user_id}/status",
                         json={"presence": "unavailable", "status_msg": "from synapse"})
    deadline = time.monotonic() + WITHIN
    while (status := await status_of(o_user, s_user.user_id)) is None or status.get("status_msg") != "from synapse":
        assert time.monotonic() < deadline, status
        await asyncio.sleep(0.2)
    assert status["presence"] == "unavailable"
