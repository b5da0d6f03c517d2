"""Floats from a real Synapse in rooms of version 1, 3 and 5 (issue 24).

Synapse keeps a float a float: a client's ``1.0`` or ``1e3`` is stored, hashed, signed and
sent as ``1.0`` / ``1000.0``, and in rooms 1-5 nothing refuses it. Our server parses the
PDU keeping the floats (``events/canonical.loads_exact``), so the event arrives under
Synapse's event ID, its content hash matches (it is not used redacted) and our user sees
the floats as sent.
"""

from __future__ import annotations

import secrets
from urllib.parse import quote

import aiohttp
import pytest

from homeserver.storage.events import Outcome
from tests.interop.conftest import OurServer, new_user
from tests.interop.synapse import SynapseServer

pytestmark = pytest.mark.interop

CONTENT = {"msgtype": "m.text", "body": "floats", "org.example.one": 1.0, "org.example.thousand": 1e3,
           "org.example.half": 0.5}


@pytest.mark.parametrize("version", ["1", "3", "5"])
async def test_synapse_event_with_floats_arrives_as_sent(
    synapse: SynapseServer, ours: tuple[OurServer, OurServer], http: aiohttp.ClientSession, version: str
) -> None:
    a, _ = ours
    s_admin = await new_user(http, synapse.client_url)
    o_user = await new_user(http, a.client_url)
    room = await s_admin.create_room(version, name=f"floats v{version}", invite=[o_user.user_id])
    await o_user.sync_until(lambda: room in o_user.invites)
    assert await o_user.join(room, [synapse.server_name]) == room
    await s_admin.wait_for_membership(room, o_user.user_id, "join")

    path = f"/_matrix/client/v3/rooms/{quote(room, safe='')}/send/m.room.message/{secrets.token_hex(8)}"
    event_id = str((await s_admin.request("PUT", path, json=CONTENT))["event_id"])
    # Synapse kept the floats (its own copy, as its clients get it).
    theirs = await s_admin.request(
        "GET", f"/_matrix/client/v3/rooms/{quote(room, safe='')}/event/{quote(event_id, safe='')}")
    assert isinstance(theirs["content"]["org.example.thousand"], float)

    assert await o_user.wait_for_bodies(room, ["floats"]) == ["floats"]
    got = [e for e in o_user.timelines[room] if e.get("content", {}).get("body") == "floats"]
    assert [e["event_id"] for e in got] == [event_id]  # Synapse's ID, in rooms 3 and 5 a hash
    content = got[0]["content"]
    assert content == CONTENT
    assert all(isinstance(content[k], float) for k in ("org.example.one", "org.example.thousand"))
    stored = await a.server.services.event_store.get_event(event_id)
    assert stored is not None and stored.outcome is Outcome.ACCEPTED
    assert not stored.event.redacted_on_receipt  # the content hash matched
