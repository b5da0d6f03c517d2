"""A Synapse pair and a room on ours: the resident's announcement, with real receivers.

A room created on our server; a first Synapse's user joins it; then a second Synapse's
user joins through us (make_join/send_join to ours). We announce that join to the first
Synapse: its user sees the join, and the second Synapse's user receives the first's
messages without having said anything (the first Synapse sends to the second only once it
holds the join). Counted on ours: one join announcement, sent to the first Synapse and not
back to the second, nothing refused.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from tests.interop.conftest import OurServer, new_user
from tests.interop.synapse import SynapseServer

pytestmark = pytest.mark.interop


def counter(server: OurServer, name: str, **labels: str) -> float:
    value = server.server.services.metrics.registry.get_sample_value(name, labels)
    return float(value or 0.0)


async def queues_drained(server: OurServer, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    db = server.server.services.db
    while (left := await db.fetchval("SELECT COUNT(*) FROM outbound_pdu_queue")) != 0:
        assert time.monotonic() < deadline, f"{left} PDUs still queued"
        await asyncio.sleep(0.05)


async def test_synapse_joining_through_us_is_announced_to_the_other_synapse(
    synapse: SynapseServer, fresh_synapse: SynapseServer, ours: tuple[OurServer, OurServer],
    http: aiohttp.ClientSession,
) -> None:
    a, _ = ours
    first, second = synapse, fresh_synapse
    o_user = await new_user(http, a.client_url)
    s1_user = await new_user(http, first.client_url)
    s2_user = await new_user(http, second.client_url)
    room_id = await o_user.create_room("11", name="announced")
    assert await s1_user.join(room_id, [a.name]) == room_id
    await o_user.wait_for_membership(room_id, s1_user.user_id, "join")
    await queues_drained(a)
    to_first = counter(a, "hs_outbound_pdus_total", destination=first.server_name)
    to_second = counter(a, "hs_outbound_pdus_total", destination=second.server_name)

    # The second Synapse joins through us: the first Synapse's user sees the join.
    assert await s2_user.join(room_id, [a.name]) == room_id
    await s1_user.wait_for_membership(room_id, s2_user.user_id, "join")
    # The first Synapse's user talks; the second's receives it without having spoken.
    await s1_user.send_text(room_id, "hello from the first synapse")
    seen = await s2_user.wait_for_bodies(room_id, ["hello from the first synapse"])
    assert seen == ["hello from the first synapse"]
    await o_user.wait_for_bodies(room_id, ["hello from the first synapse"])

    await queues_drained(a)
    assert counter(a, "hs_outbound_handshake_announcements_total", membership="join") == 1
    assert counter(a, "hs_outbound_pdus_total", destination=first.server_name) - to_first == 1
    assert counter(a, "hs_outbound_pdus_total", destination=second.server_name) - to_second == 0
    assert counter(a, "hs_outbound_refused_relays_total") == 0
