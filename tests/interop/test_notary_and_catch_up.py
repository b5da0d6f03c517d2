"""A real Synapse using our notary, and catching up from our queue after an outage.

7. A Synapse whose only trusted key server is our server N verifies the keys of a third
   server C (another of ours) through N: C's user joins a room on the Synapse, which must
   check C's request signatures first, and N counts C's keys served.
8. After a Synapse has been unreachable while 500 messages were sent to its room on our
   server, all 500 appear in its user's /sync timeline, in order, without paginating back
   (our queue is replayed, not collapsed to the newest event, which would leave Synapse a
   gap past the 10 events it fetches with /get_missing_events; and paced, each full
   transaction waited for until Synapse holds its last event, since Synapse prunes a
   room's staging area of unprocessed events past 100).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from homeserver.crypto.keys import load_key_file
from tests.interop.client import MatrixClient, bodies
from tests.interop.conftest import OurServer, new_user
from tests.interop.synapse import SynapseServer
from tests.interop.test_resilience import eventually_async

pytestmark = pytest.mark.interop

MESSAGES = 500


def metric(server: OurServer, name: str, **labels: str) -> float:
    return float(server.server.services.metrics.registry.get_sample_value(name, labels) or 0.0)


@pytest.fixture
def notary_synapse(
    synapse_python: Path, tmp_path: Path, test_ca: tuple[Path, Path], ours: tuple[OurServer, OurServer]
) -> Iterator[SynapseServer]:
    """A Synapse whose only trusted key server is our first server."""
    n, _ = ours
    key = load_key_file(n.config.signing_key_path)
    trusted = [{"server_name": n.name, "verify_keys": {key.key_id: key.verify_key_base64}}]
    server = SynapseServer(synapse_python, tmp_path / "synapse", test_ca, extra={"trusted_key_servers": trusted})
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_synapse_verifies_a_third_servers_keys_through_our_notary(
    notary_synapse: SynapseServer, ours: tuple[OurServer, OurServer], http: aiohttp.ClientSession
) -> None:
    n, c = ours
    s_user = await new_user(http, notary_synapse.client_url)
    c_user = await new_user(http, c.client_url)
    room_id = await s_user.create_room("12", name="notary")
    assert metric(n, "hs_key_notary_servers_total", result="fetched") == 0
    # C's make_join and send_join are X-Matrix signed by C: Synapse needs C's key, which it
    # asks of its trusted key server N (Synapse asks the notary before the origin itself).
    assert await c_user.join(room_id, [notary_synapse.server_name]) == room_id
    await s_user.wait_for_membership(room_id, c_user.user_id, "join")
    assert metric(n, "hs_key_notary_servers_total", result="fetched") >= 1
    # And the room works both ways.
    await c_user.send_text(room_id, "from c")
    await s_user.wait_for_bodies(room_id, ["from c"])


async def sync_all(client: MatrixClient, room_id: str, want: int, within: float) -> list[dict[str, Any]]:
    """/sync (incremental, a timeline limit above ``want``) until the room's timeline has
    ``want`` messages more; never /messages."""
    flt = json.dumps({"room": {"timeline": {"limit": 2 * want}}})
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + within
    while len(bodies(seen)) < want:
        assert time.monotonic() < deadline, f"{len(bodies(seen))}/{want} messages reached /sync"
        params = {"timeout": "5000", "filter": flt}
        if client.next_batch is not None:
            params["since"] = client.next_batch
        resp = await client.request("GET", "/_matrix/client/v3/sync", params=params, timeout=60)
        client.next_batch = resp["next_batch"]
        room = resp.get("rooms", {}).get("join", {}).get(room_id)
        if room is not None:
            seen.extend(room.get("timeline", {}).get("events", []))
    return seen


async def test_synapse_back_after_an_outage_gets_all_500_messages_in_order(
    fresh_synapse: SynapseServer, ours: tuple[OurServer, OurServer], http: aiohttp.ClientSession
) -> None:
    a, _ = ours
    o_user = await new_user(http, a.client_url)
    s_user = await new_user(http, fresh_synapse.client_url)
    room_id = await o_user.create_room("12")
    await s_user.join(room_id, [a.name])
    await o_user.wait_for_membership(room_id, s_user.user_id, "join")
    await o_user.send_text(room_id, "before")
    await s_user.wait_for_bodies(room_id, ["before"])

    await asyncio.to_thread(fresh_synapse.stop)
    texts = [f"dark {i}" for i in range(MESSAGES)]
    for text in texts:
        await o_user.send_text(room_id, text)
    dest = fresh_synapse.server_name
    await eventually_async(lambda: metric(a, "hs_outbound_transactions_total", destination=dest, result="failed") >= 1)
    pdus, edus = await a.server.services.sender.queue_depth(dest)
    assert pdus == MESSAGES and edus <= 1  # the EDU: our user's presence (online, sending)

    # Back: our backoff (at most 1 s here) retries it, and the queue is replayed.
    await asyncio.to_thread(fresh_synapse.start)
    seen = await sync_all(s_user, room_id, MESSAGES, within=300)
    assert bodies(seen) == texts  # all 500, in order, each once, by /sync alone
    assert metric(a, "hs_outbound_catch_ups_total", reason="threshold") == 0
    assert metric(a, "hs_outbound_catch_ups_total", reason="age") == 0
