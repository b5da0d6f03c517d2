"""Every room version, 1 to 12, shared with a real Synapse (issue 24).

For each version, in one test:

1. A room created on Synapse, inviting our user (Synapse's ``/v2/invite`` to us); our user
   joins over federation; a message each way arrives in /sync on both sides with the same
   event IDs; both sides agree on the state; Synapse's user sets the topic and ours sees
   it; then Synapse bans our user and our server receives the ban.
2. A room created on ours, inviting a Synapse user (our ``/v2/invite``); that user joins;
   a message each way; our user sets the topic and Synapse sees it; then our server bans
   the Synapse user and Synapse receives the ban (and refuses the rejoin).
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import quote

import aiohttp
import pytest

from tests.interop.client import ClientError, MatrixClient
from tests.interop.conftest import OurServer, new_user
from tests.interop.synapse import SynapseServer

pytestmark = pytest.mark.interop

VERSIONS = [str(v) for v in range(1, 13)]


async def state_of(client: MatrixClient, room_id: str) -> dict[tuple[str, str], str]:
    events = await client.request("GET", f"/_matrix/client/v3/rooms/{quote(room_id, safe='')}/state")
    return {(e["type"], e["state_key"]): e["event_id"] for e in events}


async def topic_crosses(room_id: str, setter: MatrixClient, other: MatrixClient, text: str) -> None:
    """A state change: ``setter`` (the room's creator) sets the topic; ``other`` sees it."""
    path = f"/_matrix/client/v3/rooms/{quote(room_id, safe='')}/state/m.room.topic/"
    await setter.request("PUT", path, json={"topic": text})
    deadline = time.monotonic() + 30
    while True:
        try:
            if (await other.state_event(room_id, "m.room.topic")).get("topic") == text:
                return
        except ClientError:
            pass
        assert time.monotonic() < deadline, f"{other.user_id} never saw the topic {text!r}"
        await asyncio.sleep(0.1)


async def talk(room_id: str, first: MatrixClient, second: MatrixClient, tag: str) -> None:
    """A message from each; both see both, once, under the same event IDs."""
    ids = {await first.send_text(room_id, f"{tag} one"), await second.send_text(room_id, f"{tag} two")}
    expected = [f"{tag} one", f"{tag} two"]
    for client in (first, second):
        seen = await client.wait_for_bodies(room_id, expected)
        assert sorted(seen) == sorted(expected), f"{client.user_id} saw {seen}"
        got = {e["event_id"] for e in client.timelines[room_id] if e["type"] == "m.room.message"}
        assert got == ids
    assert await state_of(first, room_id) == await state_of(second, room_id)


@pytest.mark.parametrize("version", VERSIONS)
async def test_room_version_both_ways(
    synapse: SynapseServer, ours: tuple[OurServer, OurServer], http: aiohttp.ClientSession, version: str
) -> None:
    a, _ = ours
    # 1. Synapse's room: we join, talk, and are banned.
    s_admin = await new_user(http, synapse.client_url)
    o_user = await new_user(http, a.client_url)
    room_s = await s_admin.create_room(version, name=f"synapse v{version}", invite=[o_user.user_id])
    created = await s_admin.state_event(room_s, "m.room.create")
    assert created.get("room_version", "1") == version
    await o_user.sync_until(lambda: room_s in o_user.invites)  # Synapse's /v2/invite to us
    assert await o_user.join(room_s, [synapse.server_name]) == room_s
    await s_admin.wait_for_membership(room_s, o_user.user_id, "join")
    await talk(room_s, s_admin, o_user, f"synapse v{version}")
    await topic_crosses(room_s, s_admin, o_user, f"synapse topic v{version}")
    await s_admin.ban(room_s, o_user.user_id)
    await o_user.wait_for_membership(room_s, o_user.user_id, "ban")

    # 2. Our room: Synapse's user joins, talks, and is banned by us.
    o_admin = await new_user(http, a.client_url)
    s_user = await new_user(http, synapse.client_url)
    room_o = await o_admin.create_room(version, name=f"ours v{version}", invite=[s_user.user_id])
    assert (await o_admin.state_event(room_o, "m.room.create")).get("room_version", "1") == version
    await s_user.sync_until(lambda: room_o in s_user.invites)  # our /v2/invite to Synapse
    assert await s_user.join(room_o, [a.name]) == room_o
    await o_admin.wait_for_membership(room_o, s_user.user_id, "join")
    await talk(room_o, o_admin, s_user, f"ours v{version}")
    await topic_crosses(room_o, o_admin, s_user, f"our topic v{version}")
    await o_admin.ban(room_o, s_user.user_id)
    await s_user.wait_for_membership(room_o, s_user.user_id, "ban")
    with pytest.raises(Exception):  # noqa: B017 - banned: the rejoin is refused
        await s_user.join(room_o, [a.name])
