"""Knocks (room versions 7-12) and restricted joins (8-12) with a real Synapse, both ways.

1. Knocking: a room whose join rule is ``knock``; a user of the other server knocks
   (``make_knock``/``send_knock``), the room's creator sees the knock, invites the knocker,
   who joins and sends a message the creator receives. Once on a Synapse room, once on ours.
2. Restricted joins: a room whose join rule is ``restricted`` with an ``allow`` naming a
   public room; a user of the other server joins the public room, then the restricted one
   (the resident signs ``join_authorised_via_users_server``); a user in neither is refused.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from tests.interop.client import ClientError, MatrixClient
from tests.interop.conftest import OurServer, new_user
from tests.interop.synapse import SynapseServer

pytestmark = pytest.mark.interop

KNOCK_VERSIONS = [str(v) for v in range(7, 13)]
RESTRICTED_VERSIONS = [str(v) for v in range(8, 13)]


async def create(client: MatrixClient, version: str, join_rule: dict[str, Any], preset: str = "private_chat") -> str:
    body = {"room_version": version, "preset": preset,
            "initial_state": [{"type": "m.room.join_rules", "state_key": "", "content": join_rule}]}
    return str((await client.request("POST", "/_matrix/client/v3/createRoom", json=body))["room_id"])


async def knock_and_enter(room_id: str, owner: MatrixClient, knocker: MatrixClient, via: str) -> None:
    path = f"/_matrix/client/v3/knock/{quote(room_id, safe='')}?server_name={quote(via, safe='')}"
    await knocker.request("POST", path, json={"reason": "let me in"}, timeout=60)
    await owner.wait_for_membership(room_id, knocker.user_id, "knock")
    await owner.request("POST", f"/_matrix/client/v3/rooms/{quote(room_id, safe='')}/invite",
                        json={"user_id": knocker.user_id})
    await knocker.sync_until(lambda: room_id in knocker.invites)
    assert await knocker.join(room_id, [via]) == room_id
    await knocker.send_text(room_id, "knocked and in")
    await owner.wait_for_bodies(room_id, ["knocked and in"])


@pytest.mark.parametrize("version", KNOCK_VERSIONS)
async def test_knock_both_ways(
    synapse: SynapseServer, ours: tuple[OurServer, OurServer], http: aiohttp.ClientSession, version: str
) -> None:
    a, _ = ours
    s_owner = await new_user(http, synapse.client_url)
    o_knocker = await new_user(http, a.client_url)
    room_s = await create(s_owner, version, {"join_rule": "knock"})
    await knock_and_enter(room_s, s_owner, o_knocker, synapse.server_name)

    o_owner = await new_user(http, a.client_url)
    s_knocker = await new_user(http, synapse.client_url)
    room_o = await create(o_owner, version, {"join_rule": "knock"})
    await knock_and_enter(room_o, o_owner, s_knocker, a.name)


async def restricted_join(owner: MatrixClient, joiner: MatrixClient, stranger: MatrixClient, version: str,
                          via: str) -> None:
    space = await owner.create_room(version, preset="public_chat")
    allow = [{"type": "m.room_membership", "room_id": space}]
    room = await create(owner, version, {"join_rule": "restricted", "allow": allow})
    with pytest.raises(ClientError) as refused:
        await stranger.join(room, [via])
    assert refused.value.status == 403, refused.value.body
    await joiner.join(space, [via])
    assert await joiner.join(room, [via]) == room
    await owner.wait_for_membership(room, joiner.user_id, "join")
    member = await owner.state_event(room, "m.room.member", joiner.user_id)
    assert member["membership"] == "join"
    assert member["join_authorised_via_users_server"] == owner.user_id
    await joiner.send_text(room, "in by the space")
    await owner.wait_for_bodies(room, ["in by the space"])


@pytest.mark.parametrize("version", RESTRICTED_VERSIONS)
async def test_restricted_join_both_ways(
    synapse: SynapseServer, ours: tuple[OurServer, OurServer], http: aiohttp.ClientSession, version: str
) -> None:
    a, _ = ours
    s_owner = await new_user(http, synapse.client_url)
    o_joiner, o_stranger = await new_user(http, a.client_url), await new_user(http, a.client_url)
    await restricted_join(s_owner, o_joiner, o_stranger, version, synapse.server_name)

    o_owner = await new_user(http, a.client_url)
    s_joiner, s_stranger = await new_user(http, synapse.client_url), await new_user(http, synapse.client_url)
    await restricted_join(o_owner, s_joiner, s_stranger, version, a.name)
