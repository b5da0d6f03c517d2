"""Five of our servers in one room, each user sending 100 messages: every server receives
exactly the PDUs the other servers created, each once (amplification 1.0), nothing is
relayed, and the refused-relay counter stays 0. The 0.18.5 echo would multiply the
inbound counts by the number of servers."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path

from homeserver.server import RunningServer
from homeserver.storage.events import Outcome
from tests.clients import client_server, eventually, nio_user, raw
from tests.conftest import DatabaseFactory

V3 = "/_matrix/client/v3"
SERVERS = 5
MESSAGES = 100


def _sum(server: RunningServer, name: str) -> float:
    total = 0.0
    for metric in server.services.metrics.registry.collect():
        for sample in metric.samples:
            if sample.name == name:
                total += sample.value
    return total


async def _quiet(servers: list[RunningServer]) -> bool:
    """Every inbox drained and every outbound queue empty."""
    for s in servers:
        if not s.services.inbound_worker.idle:
            return False
        if await s.services.db.fetchval("SELECT COUNT(*) FROM outbound_pdu_queue"):
            return False
    return True


async def test_five_servers_amplification_is_one(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    async with AsyncExitStack() as stack:
        servers = [
            await stack.enter_async_context(client_server(db_factory, tmp_path / f"hs{i}", test_ca))
            for i in range(SERVERS)
        ]
        users = [await stack.enter_async_context(nio_user(s, f"user{i}")) for i, s in enumerate(servers)]
        status, body = await raw(servers[0], "POST", f"{V3}/createRoom", token=users[0].access_token,
                                 json={"preset": "public_chat"})
        assert status == 200, body
        room = body["room_id"]
        first = servers[0].services.config.server_name
        for server, user in zip(servers[1:], users[1:], strict=True):
            status, body = await raw(server, "POST", f"{V3}/join/{room}?server_name={first}",
                                     token=user.access_token, json={})
            assert status == 200, body

        async def all_joined() -> bool:
            for s in servers:
                if len(await s.services.event_store.joined_members(room)) != SERVERS:
                    return False
            return await _quiet(servers)

        await eventually(all_joined, attempts=600)
        before = [_sum(s, "hs_inbound_pdus_total") for s in servers]
        sent_before = [_sum(s, "hs_outbound_pdus_total") for s in servers]

        async def talk(i: int) -> list[str]:
            ids = []
            for n in range(MESSAGES):
                status, body = await raw(servers[i], "PUT", f"{V3}/rooms/{room}/send/m.room.message/m{n}",
                                         token=users[i].access_token, json={"msgtype": "m.text", "body": f"{i}-{n}"})
                assert status == 200, body
                ids.append(body["event_id"])
            return ids

        sent = await asyncio.gather(*(talk(i) for i in range(SERVERS)))
        every = [e for ids in sent for e in ids]

        async def delivered() -> bool:
            for s in servers:
                outcomes = await s.services.event_store.get_outcomes(every)
                if len(outcomes) != len(every) or set(outcomes.values()) != {Outcome.ACCEPTED}:
                    return False
            return await _quiet(servers)

        await eventually(delivered, attempts=1200)
        expected = MESSAGES * (SERVERS - 1)
        received = [_sum(s, "hs_inbound_pdus_total") - b for s, b in zip(servers, before, strict=True)]
        assert received == [expected] * SERVERS, (received, expected)
        for s in servers:
            # No echo (received == expected, above); a duplicate can only be a message its
            # origin delivered after we had fetched it to fill a gap.
            assert _sum(s, "hs_inbound_duplicate_pdus_total") <= _sum(s, "hs_inbound_fetched_events_total")
            assert _sum(s, "hs_outbound_refused_relays_total") == 0
        # Each server sent each of its own messages once to each of the others, and nothing else.
        sent_delta = [_sum(s, "hs_outbound_pdus_total") - b for s, b in zip(servers, sent_before, strict=True)]
        assert sent_delta == [expected] * SERVERS, sent_delta
