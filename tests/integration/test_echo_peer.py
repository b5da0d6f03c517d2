"""An echoing peer, against a real server on loopback (SQLite and PostgreSQL): a rogue
server in our room re-sends the events it received (an honest server's and ours). The
duplicate-delivery counter for the rogue climbs, a warning names it, the echoes are never
processed again, and nothing is relayed: the sender refuses nothing (nothing foreign was
ever offered to it), our outbound queues and what the other servers receive from us hold
only our own events, read over real HTTP and from /metrics."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from homeserver.events.event import Event
from homeserver.events.identifiers import server_name_of
from homeserver.events.signing import sign_event
from homeserver.server import RunningServer
from homeserver.storage.events import Outcome
from tests.conftest import DatabaseFactory
from tests.local_room import LocalRoom
from tests.remote import FakeRemote, fake_remote
from tests.servers import free_port, make_config, running_server

WAIT = 30.0
THRESHOLD = 5


@dataclass
class Setup:
    server: RunningServer
    honest: FakeRemote
    rogue: FakeRemote
    room: LocalRoom


async def scrape(server: RunningServer) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """GET /metrics on the metrics listener, parsed."""
    assert server.metrics_port is not None
    async with aiohttp.ClientSession() as session, session.get(
        f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=aiohttp.ClientTimeout(total=WAIT)
    ) as resp:
        assert resp.status == 200
        text = await resp.text()
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def remote_event(room: LocalRoom, remote: FakeRemote, sender: str, body: str) -> Event:
    """A message of a remote user on top of our room, signed by the remote's key."""
    draft = room.build("m.room.message", sender, {"msgtype": "m.text", "body": body})
    pdu: dict[str, Any] = dict(draft.pdu, signatures={}, origin_server_ts=int(time.time() * 1000))
    signed = sign_event(pdu, room.version, remote.server_name, remote.key.signing_key)
    event = Event.from_pdu(signed, room.version)
    room.last = [event.event_id]
    return event


async def wait_until(check: Any, timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.05)
    return False


@pytest.fixture
async def setup(db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]) -> AsyncIterator[Setup]:
    config = make_config(
        tmp_path / "hs", await db_factory.new_settings(), test_ca,
        extra={
            "inbound": {"duplicate_warning_threshold": THRESHOLD},
            "listeners": {"metrics": {"enabled": True, "bind": "127.0.0.1", "port": free_port()}},
        },
    )
    async with running_server(config) as server, fake_remote(test_ca, tmp_path / "honest") as honest, \
            fake_remote(test_ca, tmp_path / "rogue") as rogue:
        honest.accept_sends = rogue.accept_sends = True
        room = await LocalRoom(server.services).create()
        await room.join_remote(f"@bob:{honest.server_name}")
        await room.join_remote(f"@mallory:{rogue.server_name}")
        yield Setup(server, honest, rogue, room)


async def test_echoing_peer_is_counted_named_and_never_relayed(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    s = setup
    services = s.server.services
    worker = services.inbound_worker
    # 1. The honest server sends three messages: accepted.
    bob = f"@bob:{s.honest.server_name}"
    theirs = [remote_event(s.room, s.honest, bob, f"hello {i}") for i in range(3)]
    status, _ = await s.honest.send(s.server, theirs)
    assert status == 200
    assert await worker.wait_idle(WAIT)
    for e in theirs:
        stored = await services.event_store.get_event(e.event_id)
        assert stored is not None and stored.outcome is Outcome.ACCEPTED
    # 2. We send a message: it goes to both servers in the room.
    ours = await s.room.message("ours")

    async def delivered() -> bool:
        return await _queues_empty(s) and all(
            any(t["pdus"] for t in r.received_transactions) for r in (s.honest, s.rogue)
        )

    assert await wait_until(delivered)
    processed = worker.processed
    before = await scrape(s.server)
    assert value(before, "hs_inbound_duplicate_pdus_total", origin=s.rogue.server_name) == 0
    # 3. The rogue echoes everything it has seen, three times, in new transactions.
    echoed = [*theirs, ours]
    with caplog.at_level(logging.WARNING, logger="homeserver.federation.transport"):
        for _ in range(3):
            status, body = await s.rogue.send(s.server, echoed)
            assert status == 200
            assert body == {"pdus": {e.event_id: {} for e in echoed}}
    assert await worker.wait_idle(WAIT)
    # Echoes are answered at the door: the worker processed nothing more.
    assert worker.processed == processed
    after = await scrape(s.server)
    echoes = 3 * len(echoed)
    assert value(after, "hs_inbound_duplicate_pdus_total", origin=s.rogue.server_name) == echoes
    assert value(after, "hs_inbound_pdus_dropped_total", origin=s.rogue.server_name, reason="duplicate") == echoes
    assert value(after, "hs_inbound_duplicate_pdus_total", origin=s.honest.server_name) == 0
    # The warning names the echoing peer (and only it).
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and hasattr(r, "origin")]
    assert [getattr(r, "origin") for r in warnings] == [s.rogue.server_name]  # noqa: B009
    # 4. Nothing relayed: the sender never saw a foreign event, our queues hold only ours,
    #    and neither peer ever received anything from us but our own events.
    assert value(after, "hs_outbound_refused_relays_total") == 0
    assert await wait_until(lambda: _queues_empty(s))
    queued = await services.db.fetchall("SELECT event_id FROM outbound_pdu_queue")
    assert queued == []
    for remote in (s.honest, s.rogue):
        for txn in remote.received_transactions:
            assert txn["origin"] == services.config.server_name
            for pdu in txn["pdus"]:
                assert server_name_of(pdu["sender"]) == services.config.server_name
    assert value(after, "hs_outbound_pdus_total", destination=s.honest.server_name) == 1
    assert value(after, "hs_outbound_pdus_total", destination=s.rogue.server_name) == 1


async def _queues_empty(s: Setup) -> bool:
    sender = s.server.services.sender
    return (await sender.queue_depth(s.honest.server_name) == (0, 0)
            and await sender.queue_depth(s.rogue.server_name) == (0, 0))
