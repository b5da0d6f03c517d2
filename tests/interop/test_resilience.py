"""Restarts on either side of a federation with a real Synapse, room versions 1, 5, 9 and 10-12.

5. Our server restarts while Synapse keeps sending: after the restart every event is there
   (our store, our user's /messages), nothing lost and nothing stored or shown twice.
6. Synapse is stopped while we send: our queue to it backs off (failed transactions, the
   destination in backoff); Synapse comes back and catches up on every event, each once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiohttp
import pytest

from tests.interop.client import bodies
from tests.interop.conftest import OurServer, new_user
from tests.interop.synapse import SynapseServer

pytestmark = pytest.mark.interop

# 10-12, and one room of each older family: 1 (origin event IDs, state res v1), 5 (the
# last without canonical JSON), 9 (the last before integer-only power levels).
VERSIONS = ["1", "5", "9", "10", "11", "12"]


async def eventually_async(check: Callable[[], object], within: float = 60.0, interval: float = 0.2) -> None:
    deadline = time.monotonic() + within
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(interval)


def metric(server: OurServer, name: str, **labels: str) -> float:
    return float(server.server.services.metrics.registry.get_sample_value(name, labels) or 0.0)


async def stored_once(server: OurServer, event_ids: list[str]) -> bool:
    db = server.server.services.db
    for event_id in event_ids:
        if await db.fetchval("SELECT COUNT(*) FROM events WHERE event_id = ?", event_id) != 1:
            return False
    return True


@pytest.mark.parametrize("version", VERSIONS)
async def test_our_restart_while_synapse_sends(
    synapse: SynapseServer, ours: tuple[OurServer, OurServer], http: aiohttp.ClientSession, version: str
) -> None:
    a, _ = ours
    s_user = await new_user(http, synapse.client_url)
    o_user = await new_user(http, a.client_url)
    room_id = await s_user.create_room(version)
    await o_user.join(room_id, [synapse.server_name])
    await s_user.wait_for_membership(room_id, o_user.user_id, "join")

    sent: list[str] = []
    texts: list[str] = []

    async def say(text: str) -> None:
        sent.append(await s_user.send_text(room_id, text))
        texts.append(text)

    await say("before 1")
    await say("before 2")
    await eventually_async(lambda: stored_once(a, sent))
    # Synapse keeps sending while our server is down and while it comes back.
    await a.stop()
    for i in range(5):
        await say(f"while down {i}")
    await a.start()
    for i in range(3):
        await say(f"after restart {i}")

    await eventually_async(lambda: stored_once(a, sent), within=90)
    # Our user sees each message once, in Synapse's order, through our client API.
    shown = bodies(await o_user.messages(room_id))
    assert shown == texts
    # The /sync position taken before the restart still works and shows nothing twice.
    await o_user.sync_until(lambda: "after restart 2" in bodies(o_user.timelines.get(room_id, [])))
    seen = bodies(o_user.timelines[room_id])
    assert len(seen) == len(set(seen))


@pytest.mark.parametrize("version", VERSIONS)
async def test_synapse_down_while_we_send(
    fresh_synapse: SynapseServer, ours: tuple[OurServer, OurServer], http: aiohttp.ClientSession, version: str
) -> None:
    a, _ = ours
    dest = fresh_synapse.server_name
    o_user = await new_user(http, a.client_url)
    s_user = await new_user(http, fresh_synapse.client_url)
    room_id = await o_user.create_room(version)
    await s_user.join(room_id, [a.name])
    await o_user.wait_for_membership(room_id, s_user.user_id, "join")
    texts = ["up 1"]
    await o_user.send_text(room_id, "up 1")
    await s_user.wait_for_bodies(room_id, ["up 1"])

    fresh_synapse.stop()
    failed_before = metric(a, "hs_outbound_transactions_total", destination=dest, result="failed")
    for i in range(6):
        texts.append(f"down {i}")
        await o_user.send_text(room_id, texts[-1])
    # Our queue meets the dead peer, and backs off instead of spinning.
    await eventually_async(
        lambda: metric(a, "hs_outbound_transactions_total", destination=dest, result="failed") > failed_before
    )
    await eventually_async(lambda: metric(a, "hs_outbound_destinations_in_backoff") >= 1)
    t0 = time.monotonic()
    await asyncio.sleep(1.0)  # a few backoff periods pass
    elapsed = time.monotonic() - t0 + 1.0
    attempts = metric(a, "hs_outbound_transactions_total", destination=dest, result="failed") - failed_before
    # Backing off (0.2 s doubling to 1 s) makes a handful of attempts; a spinning queue, thousands.
    assert attempts <= 5 + 5 * elapsed, f"{attempts} attempts in {elapsed:.1f}s: no backoff"

    fresh_synapse.start()
    texts.append("back 1")
    await o_user.send_text(room_id, "back 1")
    # Synapse catches up: every message, each once, in order.
    await s_user.wait_for_bodies(room_id, texts, within=90)
    assert bodies(await s_user.messages(room_id)) == texts
