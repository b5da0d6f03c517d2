"""Threads and edits between Synapse and us: a thread reply and an edit sent on Synapse show
in our /relations and /threads and in our bundled aggregations, and ours in Synapse's."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from tests.interop.client import ClientError, MatrixClient
from tests.interop.conftest import OurServer, new_user
from tests.interop.synapse import SynapseServer

pytestmark = pytest.mark.interop

V1 = "/_matrix/client/v1"
V3 = "/_matrix/client/v3"


async def send(client: MatrixClient, room_id: str, content: dict[str, Any]) -> str:
    path = f"{V3}/rooms/{quote(room_id, safe='')}/send/m.room.message/{secrets.token_hex(8)}"
    return str((await client.request("PUT", path, json=content))["event_id"])


async def until(check: Any, within: float = 60.0) -> Any:
    deadline = time.monotonic() + within
    while True:
        try:
            found = await check()
        except ClientError:  # not there yet (a 404 while the event travels)
            found = None
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.2)


async def test_threads_and_edits_with_synapse(
    synapse: SynapseServer, ours: tuple[OurServer, OurServer], http: aiohttp.ClientSession
) -> None:
    a, _ = ours
    s_user = await new_user(http, synapse.client_url)
    o_user = await new_user(http, a.client_url)
    room_id = await s_user.create_room("11", name="threads")
    assert await o_user.join(room_id, [synapse.server_name]) == room_id
    await s_user.wait_for_membership(room_id, o_user.user_id, "join")
    room = quote(room_id, safe="")
    root = await send(s_user, room_id, {"msgtype": "m.text", "body": "root on synapse"})
    thread = {"rel_type": "m.thread", "event_id": root}
    theirs = await send(s_user, room_id, {"msgtype": "m.text", "body": "synapse reply", "m.relates_to": thread})
    await until(lambda: o_user.request("GET", f"{V3}/rooms/{room}/event/{quote(theirs, safe='')}"))
    mine = await send(o_user, room_id, {"msgtype": "m.text", "body": "our reply", "m.relates_to": thread})

    async def both_in(client: MatrixClient) -> Any:
        page = await client.request("GET", f"{V1}/rooms/{room}/relations/{quote(root, safe='')}/m.thread")
        return {e["event_id"] for e in page["chunk"]} == {theirs, mine}
    await until(lambda: both_in(o_user))
    await until(lambda: both_in(s_user))

    threads = await o_user.request("GET", f"{V1}/rooms/{room}/threads")
    assert [e["event_id"] for e in threads["chunk"]] == [root]
    summary = threads["chunk"][0]["unsigned"]["m.relations"]["m.thread"]
    assert summary["count"] == 2 and summary["current_user_participated"] is True
    assert summary["latest_event"]["event_id"] == mine

    # An edit on Synapse is bundled by us; Synapse bundles ours of our message.
    edit = await send(s_user, room_id, {"msgtype": "m.text", "body": "* root, edited",
                                        "m.new_content": {"msgtype": "m.text", "body": "root, edited"},
                                        "m.relates_to": {"rel_type": "m.replace", "event_id": root}})

    async def ours_bundles() -> Any:
        event = await o_user.request("GET", f"{V3}/rooms/{room}/event/{quote(root, safe='')}")
        return event["unsigned"].get("m.relations", {}).get("m.replace", {}).get("event_id") == edit
    await until(ours_bundles)
    own = await send(o_user, room_id, {"msgtype": "m.text", "body": "typo"})
    own_edit = await send(o_user, room_id, {"msgtype": "m.text", "body": "* fixed",
                                            "m.new_content": {"msgtype": "m.text", "body": "fixed"},
                                            "m.relates_to": {"rel_type": "m.replace", "event_id": own}})

    async def synapse_bundles() -> Any:
        event = await s_user.request("GET", f"{V3}/rooms/{room}/event/{quote(own, safe='')}")
        return event["unsigned"].get("m.relations", {}).get("m.replace", {}).get("event_id") == own_edit
    await until(synapse_bundles)
