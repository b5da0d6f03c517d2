"""The inbound worker's per-PDU pipeline and the endpoints served to other servers, with
real servers on loopback (a fake remote with its own keys), on SQLite and PostgreSQL:
third-server events (and the strict switch), gaps filled through get_missing_events, a dead
peer given up on within the budget while other rooms flow, rejection, redaction on a hash
mismatch, bad signatures, soft failure against the current state, and who may read what."""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import quote

from homeserver.storage.events import Outcome
from tests.conftest import DatabaseFactory
from tests.integration.test_inbound_send import WAIT, Setup, metric, outcome
from tests.integration.test_inbound_send import setup as setup
from tests.remote import fake_remote
from tests.servers import make_config, running_server


async def _third_server_flow(
    db_factory: DatabaseFactory, tmp_path: Path, ca: tuple[Path, Path], strict: bool
) -> None:
    config = make_config(tmp_path / "hs", await db_factory.new_settings(), ca,
                         extra={"inbound": {"strict_origin": strict}})
    async with running_server(config) as server, fake_remote(ca, tmp_path / "r") as remote, \
            fake_remote(ca, tmp_path / "third") as third:
        room = remote.room()
        room.create_room()
        await room.teach(server)
        carol = f"@carol:{third.server_name}"
        join = room.build("m.room.member", carol, {"membership": "join"}, carol, signer=third)
        hello = room.message("hello from a third server", sender=carol, signer=third)
        status, body = await remote.send(server, [join, hello])
        assert status == 200
        assert body["pdus"][join.event_id] == {}
        assert await server.services.inbound_worker.wait_idle(WAIT)
        assert await outcome(server, join.event_id) is Outcome.ACCEPTED
        if strict:
            assert "error" in body["pdus"][hello.event_id]
            assert await outcome(server, hello.event_id) is None
            assert metric(server, "hs_inbound_pdus_dropped_total",
                          {"origin": remote.server_name, "reason": "foreign_sender"}) == 1
        else:
            assert body["pdus"][hello.event_id] == {}
            assert await outcome(server, hello.event_id) is Outcome.ACCEPTED


async def test_third_server_events_are_processed(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    await _third_server_flow(db_factory, tmp_path, test_ca, strict=False)


async def test_strict_origin_refuses_third_server_messages_but_not_joins(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    await _third_server_flow(db_factory, tmp_path, test_ca, strict=True)


async def test_gap_is_filled_through_get_missing_events(setup: Setup) -> None:
    s = setup
    msgs = [s.room.message(f"gap {i}") for i in range(6)]
    status, _ = await s.remote.send(s.server, [msgs[-1]])  # only the latest
    assert status == 200
    assert await s.server.services.inbound_worker.wait_idle(WAIT)
    for m in msgs:
        assert await outcome(s.server, m.event_id) is Outcome.ACCEPTED
    assert ("POST", f"/_matrix/federation/v1/get_missing_events/{s.room.room_id}") in [
        (m, p) for m, p in s.remote.requests
    ]
    assert await s.server.services.event_store.get_forward_extremities(s.room.room_id) == [msgs[-1].event_id]
    # The five before it were fetched; their origin delivering them now is a duplicate of that.
    assert metric(s.server, "hs_inbound_fetched_events_total", {}) == 5
    status, _ = await s.remote.send(s.server, msgs[:-1])
    assert status == 200
    assert metric(s.server, "hs_inbound_duplicate_pdus_total", {"origin": s.remote.server_name}) == 5


async def test_dead_peer_costs_the_budget_and_other_rooms_flow(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    budget = 8.0
    config = make_config(tmp_path / "hs", await db_factory.new_settings(), test_ca,
                         extra={"inbound": {"missing_events_timeout": budget}})
    async with running_server(config) as server, fake_remote(test_ca, tmp_path / "dead") as dead, \
            fake_remote(test_ca, tmp_path / "alive") as alive:
        room_a, room_b = dead.room(), alive.room()
        room_a.create_room()
        room_b.create_room()
        await room_a.teach(server)
        await room_b.teach(server)
        room_a.message("never sent")
        stuck = room_a.message("after the gap")
        dead.hang = True
        assert (await dead.send(server, [stuck]))[0] == 200
        for _ in range(int(WAIT / 0.01)):  # until the worker waits on the dead peer
            if dead.requests:
                break
            await asyncio.sleep(0.01)
        assert dead.requests
        flowing = [room_b.message(f"b{i}") for i in range(5)]
        assert (await alive.send(server, flowing))[0] == 200
        for _ in range(int(WAIT / 0.05)):
            if await outcome(server, flowing[-1].event_id) is Outcome.ACCEPTED:
                break
            await asyncio.sleep(0.05)
        # Room B was processed while room A's peer still had not answered.
        assert await outcome(server, flowing[-1].event_id) is Outcome.ACCEPTED
        assert await outcome(server, stuck.event_id) is None
        assert not server.services.inbound_worker.idle
        # Room A's event is given up on once the budget is spent.
        assert await server.services.inbound_worker.wait_idle(budget + WAIT)
        assert await outcome(server, stuck.event_id) is None
        assert metric(server, "hs_missing_events_fetches_total",
                      {"kind": "get_missing_events", "result": "failed"}) == 1
        assert metric(server, "hs_events_processed_total", {"outcome": "dropped"}) == 1


async def test_unauthorised_event_is_rejected_and_stays_out_of_state(setup: Setup) -> None:
    s = setup
    stranger = f"@stranger:{s.remote.server_name}"
    topic = s.room.build("m.room.topic", stranger, {"topic": "not yours"}, "", add=False)
    await s.remote.send(s.server, [topic])
    assert await s.server.services.inbound_worker.wait_idle(WAIT)
    stored = await s.server.services.event_store.get_event(topic.event_id)
    assert stored is not None and stored.outcome is Outcome.REJECTED
    current = await s.server.services.event_store.get_current_state_ids(s.room.room_id)
    assert ("m.room.topic", "") not in current


async def test_hash_mismatch_is_redacted_and_bad_signature_dropped(setup: Setup) -> None:
    s = setup
    tampered = s.room.message("original", add=False)
    pdu = dict(tampered.pdu, content={"msgtype": "m.text", "body": "changed"})  # signature still holds
    bad_sig = s.room.message("forged", add=False)
    forged = dict(bad_sig.pdu, signatures={s.remote.server_name: {
        s.remote.key.key_id: "A" * 86}})
    status, _ = await s.remote.send_raw(s.server, "tamper", s.remote.transaction([pdu, forged]))
    assert status == 200
    assert await s.server.services.inbound_worker.wait_idle(WAIT)
    stored = await s.server.services.event_store.get_event(tampered.event_id)
    assert stored is not None and stored.event.content == {}
    assert await outcome(s.server, bad_sig.event_id) is None
    assert metric(s.server, "hs_events_processed_total", {"outcome": "dropped"}) == 1


async def test_endpoints_served_to_servers_in_the_room(
    setup: Setup, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    s = setup
    msgs = [s.room.message(f"read {i}") for i in range(4)]
    await s.remote.send(s.server, msgs)
    assert await s.server.services.inbound_worker.wait_idle(WAIT)
    room = quote(s.room.room_id, safe="")
    p = "/_matrix/federation/v1"
    status, body = await s.remote.get(s.server, f"{p}/event/{quote(msgs[0].event_id, safe='')}")
    assert status == 200 and body["pdus"] == [msgs[0].pdu]
    status, body = await s.remote.get(s.server, f"{p}/state_ids/{room}?event_id={quote(msgs[1].event_id)}")
    assert status == 200
    assert set(body["pdu_ids"]) == {e.event_id for e in s.room.events[:4]}
    status, body = await s.remote.get(s.server, f"{p}/state/{room}?event_id={quote(msgs[1].event_id)}")
    assert status == 200 and len(body["pdus"]) == 4
    status, body = await s.remote.get(s.server, f"{p}/event_auth/{room}/{quote(msgs[1].event_id, safe='')}")
    assert status == 200 and {e["type"] for e in body["auth_chain"]} >= {"m.room.create", "m.room.member"}
    status, body = await s.remote.get(s.server, f"{p}/get_missing_events/{room}", "POST", {
        "limit": 10, "earliest_events": [msgs[0].event_id], "latest_events": [msgs[3].event_id]})
    assert status == 200 and [e["content"]["body"] for e in body["events"]] == ["read 1", "read 2"]
    status, body = await s.remote.get(s.server, f"{p}/backfill/{room}?v={quote(msgs[3].event_id)}&limit=2")
    assert status == 200 and len(body["pdus"]) == 2 and body["pdus"][0] == msgs[3].pdu
    # A server that is not in the room reads nothing.
    async with fake_remote(test_ca, tmp_path / "outsider") as outsider:
        status, body = await outsider.get(s.server, f"{p}/event/{quote(msgs[0].event_id, safe='')}")
        assert status == 403 and body["errcode"] == "M_FORBIDDEN"
        status, _ = await outsider.get(s.server, f"{p}/state_ids/{room}?event_id={quote(msgs[1].event_id)}")
        assert status == 403
        status, _ = await outsider.get(s.server, f"{p}/backfill/{room}?v={quote(msgs[3].event_id)}")
        assert status == 403


async def test_event_held_as_outlier_is_taken_into_the_room(setup: Setup) -> None:
    """An event we hold only as an outlier (fetched as someone's auth or state) is not a
    duplicate at the door: when it arrives over /send it is processed into the timeline."""
    s = setup
    early = s.room.message("known early as an outlier")
    await s.server.services.persister.persist_outliers([early])
    assert await outcome(s.server, early.event_id) is Outcome.OUTLIER
    status, body = await s.remote.send(s.server, [early])
    assert status == 200 and body["pdus"][early.event_id] == {}
    assert await s.server.services.inbound_worker.wait_idle(WAIT)
    assert await outcome(s.server, early.event_id) is Outcome.ACCEPTED
    assert metric(s.server, "hs_inbound_duplicate_pdus_total", {"origin": s.remote.server_name}) == 0
    extremities = await s.server.services.event_store.get_forward_extremities(s.room.room_id)
    assert extremities == [early.event_id]


async def test_banned_sender_citing_old_events_is_soft_failed(setup: Setup) -> None:
    """Step 6: an event that passes auth at its own place in the DAG but not against the
    current state (a banned user citing the events before the ban) is soft-failed: stored,
    never in the current state, not accepted."""
    s = setup
    mallory = f"@mallory:{s.remote.server_name}"
    join = s.room.build("m.room.member", mallory, {"membership": "join"}, mallory)
    before_ban = s.room.message("before the ban")
    state_then = dict(s.room.state)
    ban = s.room.build("m.room.member", s.room.creator, {"membership": "ban"}, mallory)
    await s.room.teach(s.server, [join, before_ban, ban])
    evading = s.room.build("m.room.message", mallory, {"msgtype": "m.text", "body": "still here"},
                           prev=[before_ban.event_id], auth_from=state_then, add=False)
    await s.remote.send(s.server, [evading])
    assert await s.server.services.inbound_worker.wait_idle(WAIT)
    assert await outcome(s.server, evading.event_id) is Outcome.SOFT_FAILED
    current = await s.server.services.event_store.get_current_state_ids(s.room.room_id)
    assert current[("m.room.member", mallory)] == ban.event_id
    assert await s.server.services.event_store.get_forward_extremities(s.room.room_id) == [ban.event_id]


async def test_sender_joined_on_the_events_own_branch_is_not_soft_failed(setup: Setup) -> None:
    """The current state of step 6 is the resolution across the forward extremities, the
    event's own branch included once it is accepted: carol re-joined on a branch we learn
    only through the state fetched for a gap (get_missing_events finds nothing), so her
    join is an outlier and not yet in our current state; her message there is accepted."""
    s = setup
    carol = f"@carol:{s.remote.server_name}"
    first_join = s.room.build("m.room.member", carol, {"membership": "join"}, carol)
    left = s.room.build("m.room.member", carol, {"membership": "leave"}, carol)
    await s.room.teach(s.server, [first_join, left])
    # Our branch goes on without carol; hers re-joins from the same point.
    ours = s.room.message("meanwhile")
    await s.room.teach(s.server, [ours])
    rejoin = s.room.build("m.room.member", carol, {"membership": "join"}, carol, prev=[left.event_id])
    hello = s.room.message("back again", sender=carol)
    assert list(hello.prev_events) == [rejoin.event_id]
    s.remote.serve_missing_events = False
    await s.remote.send(s.server, [hello])
    assert await s.server.services.inbound_worker.wait_idle(WAIT)
    assert await outcome(s.server, hello.event_id) is Outcome.ACCEPTED
    current = await s.server.services.event_store.get_current_state_ids(s.room.room_id)
    assert current[("m.room.member", carol)] == rejoin.event_id
    extremities = await s.server.services.event_store.get_forward_extremities(s.room.room_id)
    assert sorted(extremities) == sorted([ours.event_id, hello.event_id])
