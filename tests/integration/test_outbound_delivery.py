"""Outbound delivery to real HTTPS peers on loopback: each of our events reaches each
destination exactly once, another server's event is refused at the sender's entry, a ban
reaches a server with no member left, EDUs carry only our users."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from homeserver.server import RunningServer
from tests.conftest import DatabaseFactory
from tests.local_room import LocalRoom
from tests.outbound_receiver import Receiver, eventually
from tests.servers import make_config, running_server

FAST = {
    "federation": {"connect_timeout": 2.0, "request_timeout": 5.0},
    "outbound": {"backoff_initial_seconds": 0.2, "backoff_ceiling_seconds": 1.0, "send_timeout": 5.0},
}


def metric(server: RunningServer, name: str, labels: dict[str, str] | None = None) -> float:
    value = server.services.metrics.registry.get_sample_value(name, labels or {})
    return value or 0.0


@pytest.fixture
async def peers(tmp_path: Path, test_ca: tuple[Path, Path]) -> AsyncIterator[list[Receiver]]:
    receivers = [Receiver(tmp_path / f"peer{i}", test_ca) for i in range(3)]
    for r in receivers:
        await r.start()
    try:
        yield receivers
    finally:
        for r in receivers:
            await r.close()


@pytest.fixture
async def server_a(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> AsyncIterator[RunningServer]:
    cfg = make_config(tmp_path / "a", await db_factory.new_settings(), test_ca, extra=FAST)
    async with running_server(cfg) as a:
        yield a


async def test_each_destination_receives_each_event_once(server_a: RunningServer, peers: list[Receiver]) -> None:
    b, c, d = peers
    room = await LocalRoom(server_a.services).create()
    assert all(dests == set() for _, dests in room.sent)  # nobody else in the room yet
    await room.join_remote(f"@bob:{b.server_name}")
    await room.join_remote(f"@bob2:{b.server_name}")  # two members on b: still one copy
    await room.join_remote(f"@carol:{c.server_name}")
    events = [await room.message(f"hello {i}") for i in range(60)]

    def got_all(r: Receiver) -> bool:
        return len(r.pdu_ids()) >= len(events)

    await b.wait_for(got_all)
    await c.wait_for(got_all)
    for r in (b, c):
        counts = r.pdu_counts()
        assert [r._event_id(p) for t in r.transactions for p in t.pdus] == [e.event_id for e in events]
        assert set(counts.values()) == {1}
        assert r.repeats == 0 and r.rejected_auth == 0
        txn_ids = [t.txn_id for t in r.transactions]
        assert len(set(txn_ids)) == len(txn_ids) and len(txn_ids) >= 2  # 60 PDUs: > 1 transaction
        assert all(len(t.pdus) <= 50 for t in r.transactions)
    assert d.attempts == 0  # not in the room
    sender = server_a.services.sender

    async def drained() -> bool:
        return await sender.queue_depth(b.server_name) == (0, 0) == await sender.queue_depth(c.server_name)

    await eventually(drained)
    dest_b = {"destination": b.server_name}
    assert metric(server_a, "hs_outbound_pdus_total", dest_b) == len(events)
    # the queue is empty and the JSON store garbage-collected (after the last
    # acknowledgement is recorded, which may trail the receiver's view slightly)
    assert await server_a.services.sender.queue_depth(b.server_name) == (0, 0)

    async def collected() -> bool:
        return await server_a.services.db.fetchval("SELECT COUNT(*) FROM outbound_pdus") == 0

    await eventually(collected)


async def test_events_of_other_servers_are_refused(server_a: RunningServer, peers: list[Receiver]) -> None:
    b, c, _ = peers
    room = await LocalRoom(server_a.services).create()
    bob = f"@bob:{b.server_name}"
    await room.join_remote(bob)
    await room.join_remote(f"@carol:{c.server_name}")
    assert metric(server_a, "hs_outbound_refused_relays_total") == 0
    # Bob's message as if received from b: asking the sender to relay it is refused, counted.
    relayed = room.build("m.room.message", bob, {"msgtype": "m.text", "body": "from b"})
    await room.persist(relayed, enqueue=True)
    assert metric(server_a, "hs_outbound_refused_relays_total") == 1
    async with server_a.services.db.transaction() as conn:
        await server_a.services.sender.enqueue_event(conn, relayed, [c.server_name])
    assert metric(server_a, "hs_outbound_refused_relays_total") == 2
    ours = await room.message("ours")
    await c.wait_for(lambda r: ours.event_id in r.pdu_counts())
    await b.wait_for(lambda r: ours.event_id in r.pdu_counts())
    for r in (b, c):
        assert relayed.event_id not in r.pdu_counts()
        assert r.pdu_counts()[ours.event_id] == 1
    assert await server_a.services.db.fetchval(
        "SELECT COUNT(*) FROM outbound_pdu_queue WHERE event_id = ?", relayed.event_id
    ) == 0


async def test_ban_reaches_a_server_with_no_member_left(server_a: RunningServer, peers: list[Receiver]) -> None:
    b, c, _ = peers
    room = await LocalRoom(server_a.services).create()
    carol = f"@carol:{c.server_name}"
    await room.join_remote(f"@bob:{b.server_name}")
    await room.join_remote(carol)
    await room.leave_remote(carol)  # c's last member leaves
    msg = await room.message("c is gone")
    ban = await room.send("m.room.member", room.creator, {"membership": "ban"}, carol)
    await c.wait_for(lambda r: ban.event_id in r.pdu_counts())
    await b.wait_for(lambda r: ban.event_id in r.pdu_counts())
    assert msg.event_id not in c.pdu_counts()  # c had no member for the message
    assert c.pdu_counts()[ban.event_id] == 1


async def test_edus_only_about_our_users(server_a: RunningServer, peers: list[Receiver]) -> None:
    b, _, _ = peers
    sender = server_a.services.sender
    alice = f"@alice:{server_a.services.config.server_name}"
    typing: dict[str, Any] = {"room_id": "!r:x", "user_id": alice, "typing": True}
    assert await sender.enqueue_edu("m.typing", typing, [b.server_name])
    receipt = {"!r:x": {"m.read": {alice: {"event_ids": ["$e"], "data": {"ts": 1}}}}}
    assert await sender.enqueue_edu("m.receipt", receipt, [b.server_name])
    presence = {"push": [{"user_id": alice, "presence": "online", "last_active_ago": 1}]}
    assert await sender.enqueue_edu("m.presence", presence, [b.server_name])
    # about someone else's user: refused and counted
    assert not await sender.enqueue_edu("m.typing", {**typing, "user_id": "@eve:evil.test"}, [b.server_name])
    assert not await sender.enqueue_edu(
        "m.receipt", {"!r:x": {"m.read": {alice: {}, "@eve:evil.test": {}}}}, [b.server_name]
    )
    assert not await sender.enqueue_edu("m.unknown", {"user_id": alice}, [b.server_name])
    assert metric(server_a, "hs_outbound_refused_edus_total") == 3
    await b.wait_for(lambda r: sum(len(t.edus) for t in r.transactions) >= 3)
    edus = [e for t in b.transactions for e in t.edus]
    assert [e["edu_type"] for e in edus] == ["m.typing", "m.receipt", "m.presence"]
    assert edus[0]["content"] == typing
