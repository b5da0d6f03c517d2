"""What A announces, counted event by event at recording peers (both engines): a room on
our server A with members on two recording servers (``Receiver``), and a fake remote C
(its own key, signed requests) that joins, leaves and knocks through A's make_*/send_*.
Each peer receives each of C's handshake events exactly once, C never receives its own,
a retried send_join (v2 or v1) sends nothing more. And the limits of the one exception:
C's join or message arriving through /send is never relayed, and the sender refuses (and
counts) anything offered as a handshake event that is not a join, leave or knock of the
handshake's origin's user for themself."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from homeserver.events.event import Event
from homeserver.events.hashes import compute_event_id
from homeserver.events.signing import sign_event
from homeserver.events.versions import RoomVersion
from homeserver.rooms.outbox import Accepted
from homeserver.server import RunningServer
from homeserver.storage.events import Outcome
from tests.conftest import DatabaseFactory
from tests.local_room import LocalRoom
from tests.outbound_receiver import Receiver, eventually
from tests.remote import FakeRemote, fake_remote
from tests.servers import make_config, running_server

FAST = {"outbound": {"backoff_initial_seconds": 0.2, "backoff_ceiling_seconds": 1.0}}
V1 = "/_matrix/federation/v1"
V2 = "/_matrix/federation/v2"


@dataclass
class Setup:
    a: RunningServer
    peers: list[Receiver]
    c: FakeRemote
    e: FakeRemote


def metric(server: RunningServer, name: str, **labels: str) -> float:
    return float(server.services.metrics.registry.get_sample_value(name, labels) or 0.0)


@pytest.fixture
async def setup(db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]) -> AsyncIterator[Setup]:
    config = make_config(tmp_path / "a", await db_factory.new_settings(), test_ca, extra=FAST)
    peers = [Receiver(tmp_path / f"peer{i}", test_ca) for i in range(2)]
    for p in peers:
        await p.start()
    try:
        async with running_server(config) as a, fake_remote(test_ca, tmp_path / "c") as c, \
                fake_remote(test_ca, tmp_path / "e") as e:
            c.accept_sends = e.accept_sends = True
            yield Setup(a, peers, c, e)
    finally:
        for p in peers:
            await p.close()


async def room_with_peers(s: Setup, join_rule: str = "public") -> LocalRoom:
    """A room of A's (v10) with a joined member on each recording peer (joins stored as received)."""
    room = await LocalRoom(s.a.services).create(join_rule)
    for i, peer in enumerate(s.peers):
        await room.join_remote(f"@p{i}:{peer.server_name}")
    return room


async def handshake(
    remote: FakeRemote, server: RunningServer, room_id: str, localpart: str, membership: str, send_version: str = "v2"
) -> tuple[Event, Any]:
    """make_{membership} then send_{membership} by ``remote``'s user: the event it signed, and A's reply."""
    user_id = f"@{localpart}:{remote.server_name}"
    path = f"{V1}/make_{membership}/{quote(room_id, safe='')}/{quote(user_id, safe='')}"
    status, body = await remote.get(server, path + ("" if membership == "leave" else "?ver=10"))
    assert status == 200, body
    version = LocalRoom(server.services).version
    assert body["room_version"] == version.identifier
    pdu = {k: v for k, v in body["event"].items() if k not in ("signatures", "hashes", "unsigned", "event_id")}
    pdu.update(origin=remote.server_name, origin_server_ts=int(time.time() * 1000), signatures={})
    event = Event.from_pdu(sign_event(pdu, version, remote.server_name, remote.key.signing_key), version)
    reply = await send(remote, server, event, send_version)
    return event, reply


async def send(remote: FakeRemote, server: RunningServer, event: Event, version: str) -> Any:
    membership = event.membership
    prefix = V1 if version == "v1" else V2
    path = f"{prefix}/send_{membership}/{quote(event.room_id, safe='')}/{quote(event.event_id, safe='')}"
    status, reply = await remote.get(server, path, "PUT", event.pdu)
    assert status == 200, reply
    return reply


def received_by(remote: FakeRemote, event_id: str, version: RoomVersion) -> int:
    return sum(1 for t in remote.received_transactions for p in t["pdus"] if compute_event_id(p, version) == event_id)


async def drained(s: Setup) -> bool:
    return await s.a.services.db.fetchval("SELECT COUNT(*) FROM outbound_pdu_queue") == 0


async def test_each_handshake_reaches_each_peer_once(setup: Setup) -> None:
    s = setup
    room = await room_with_peers(s)
    version = room.version
    # C's user joins through A: each peer gets the join once, C does not get it back.
    join, reply = await handshake(s.c, s.a, room.room_id, "carol", "join")
    assert reply["event"]["sender"] == join.sender
    for peer in s.peers:
        await peer.wait_for(lambda r: join.event_id in r.pdu_counts())
    # Retries of send_join (v2 then v1: [200, {...}]) answer again and send nothing.
    assert (await send(s.c, s.a, join, "v2"))["members_omitted"] is False
    v1 = await send(s.c, s.a, join, "v1")
    assert v1[0] == 200 and set(v1[1]) == {"state", "auth_chain", "event", "origin"}
    assert v1[1]["origin"] == s.a.services.config.server_name
    # C's user leaves through A (v1 send_leave): each peer gets it once.
    leave, reply = await handshake(s.c, s.a, room.room_id, "carol", "leave", "v1")
    assert reply == [200, {}]
    for peer in s.peers:
        await peer.wait_for(lambda r: leave.event_id in r.pdu_counts())
    # Then A's own message: everything before it in each peer's queue has been sent.
    ours = await s.a.services.rooms.send_event(room.creator, room.room_id, "m.room.message",
                                              {"msgtype": "m.text", "body": "after"})
    for peer in s.peers:
        await peer.wait_for(lambda r: ours.event_id in r.pdu_counts())
    await eventually(lambda: drained(s))
    for peer in s.peers:
        counts = peer.pdu_counts()
        assert counts[join.event_id] == 1 and counts[leave.event_id] == 1 and counts[ours.event_id] == 1
        assert peer.repeats == 0 and peer.rejected_auth == 0
        assert all(t.origin == s.a.services.config.server_name for t in peer.transactions)
    # C never received its own events.
    assert received_by(s.c, join.event_id, version) == 0 and received_by(s.c, leave.event_id, version) == 0
    assert metric(s.a, "hs_outbound_handshake_announcements_total", membership="join") == 1
    assert metric(s.a, "hs_outbound_handshake_announcements_total", membership="leave") == 1
    assert metric(s.a, "hs_outbound_refused_relays_total") == 0


async def test_knock_reaches_each_peer_once(setup: Setup) -> None:
    s = setup
    room = await room_with_peers(s, join_rule="knock")
    knock, reply = await handshake(s.c, s.a, room.room_id, "carol", "knock", "v1")
    assert any(e["type"] == "m.room.join_rules" for e in reply["knock_room_state"])
    for peer in s.peers:
        await peer.wait_for(lambda r: knock.event_id in r.pdu_counts())
    await send(s.c, s.a, knock, "v1")  # a retry: nothing more
    ours = await s.a.services.rooms.send_event(room.creator, room.room_id, "m.room.message",
                                              {"msgtype": "m.text", "body": "after"})
    for peer in s.peers:
        await peer.wait_for(lambda r: ours.event_id in r.pdu_counts())
        assert peer.pdu_counts()[knock.event_id] == 1
    assert received_by(s.c, knock.event_id, room.version) == 0
    assert metric(s.a, "hs_outbound_handshake_announcements_total", membership="knock") == 1


async def test_what_arrives_through_send_is_never_relayed(setup: Setup) -> None:
    s = setup
    room = await room_with_peers(s)
    # E's user joins by sending its join through /send (no handshake), then talks.
    eve = f"@eve:{s.e.server_name}"
    events = []
    for content, etype, key in (({"membership": "join"}, "m.room.member", eve),
                                ({"msgtype": "m.text", "body": "hi"}, "m.room.message", None)):
        draft = room.build(etype, eve, content, key)
        pdu = dict(draft.pdu, signatures={}, origin_server_ts=int(time.time() * 1000))
        event = Event.from_pdu(sign_event(pdu, room.version, s.e.server_name, s.e.key.signing_key), room.version)
        room.last = [event.event_id]
        if event.is_state:
            room.state[event.state_tuple] = event
        events.append(event)
    status, _ = await s.e.send(s.a, events)
    assert status == 200
    assert await s.a.services.inbound_worker.wait_idle(30)
    for event in events:
        stored = await s.a.services.event_store.get_event(event.event_id)
        assert stored is not None and stored.outcome is Outcome.ACCEPTED
    ours = await s.a.services.rooms.send_event(room.creator, room.room_id, "m.room.message",
                                              {"msgtype": "m.text", "body": "ours"})
    for peer in s.peers:
        await peer.wait_for(lambda r: ours.event_id in r.pdu_counts())
    await eventually(lambda: drained(s))
    for peer in s.peers:
        assert set(peer.pdu_counts()) == {ours.event_id}  # nothing of E's
    # Nothing was even offered to the sender: no refusal, no announcement.
    assert metric(s.a, "hs_outbound_refused_relays_total") == 0
    for membership in ("join", "leave", "knock"):
        assert metric(s.a, "hs_outbound_handshake_announcements_total", membership=membership) == 0


async def test_sender_refuses_what_is_not_a_handshake_membership(setup: Setup) -> None:
    s = setup
    room = await room_with_peers(s)
    sender = s.a.services.sender
    dests = [p.server_name for p in s.peers] + [s.c.server_name]
    carol, dave = f"@carol:{s.c.server_name}", f"@dave:{s.c.server_name}"
    ours = room.build("m.room.member", room.creator, {"membership": "leave"}, room.creator)
    bad = [
        (room.build("m.room.message", carol, {"msgtype": "m.text", "body": "x"}), s.c.server_name),
        (room.build("m.room.member", carol, {"membership": "invite"}, dave), s.c.server_name),
        (room.build("m.room.member", carol, {"membership": "leave"}, dave), s.c.server_name),  # a kick
        (room.build("m.room.member", carol, {"membership": "ban"}, carol), s.c.server_name),
        (room.build("m.room.member", carol, {"membership": "join"}, carol), s.e.server_name),  # wrong origin
        (room.build("m.room.member", carol, {"membership": "join"}, carol), None),
        (ours, s.a.services.config.server_name),  # our own event is not a handshake's
    ]
    for n, (event, origin) in enumerate(bad, start=1):
        async with s.a.services.db.transaction() as conn:
            await sender.enqueue_event(conn, event, dests, Accepted.HANDSHAKE, handshake_origin=origin)
        assert metric(s.a, "hs_outbound_refused_relays_total") == n
    # Offered as our own, C's join is refused as well.
    join = room.build("m.room.member", carol, {"membership": "join"}, carol)
    async with s.a.services.db.transaction() as conn:
        await sender.enqueue_event(conn, join, dests)
    assert metric(s.a, "hs_outbound_refused_relays_total") == len(bad) + 1
    assert await s.a.services.db.fetchval("SELECT COUNT(*) FROM outbound_pdu_queue") == 0
    # The same join as a handshake of C's: queued for the peers, never for C.
    async with s.a.services.db.transaction() as conn:
        await sender.enqueue_event(conn, join, dests, Accepted.HANDSHAKE, handshake_origin=s.c.server_name)
    assert await sender.queue_depth(s.c.server_name) == (0, 0)
    for peer in s.peers:
        await peer.wait_for(lambda r: join.event_id in r.pdu_counts())
    assert metric(s.a, "hs_outbound_refused_relays_total") == len(bad) + 1
    assert metric(s.a, "hs_outbound_handshake_announcements_total", membership="join") == 1
    assert s.c.received_transactions == []
