"""Inbound /send against a real server on loopback, from a fake remote server with its own
key and key endpoint, on SQLite and PostgreSQL: events land, repeats and echoes cost
nothing, the worker can be held while /send keeps answering, the inbox survives a restart,
and malformed transactions leave the inbox as it was."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from homeserver.server import RunningServer
from homeserver.storage.events import Outcome
from tests.conftest import DatabaseFactory
from tests.remote import FakeRemote, RemoteRoom, fake_remote
from tests.servers import make_config, running_server

WAIT = 30.0


@dataclass
class Setup:
    server: RunningServer
    remote: FakeRemote
    room: RemoteRoom


async def inbox_count(server: RunningServer) -> int:
    return int(await server.services.db.fetchval("SELECT COUNT(*) FROM inbox"))


async def outcome(server: RunningServer, event_id: str) -> Outcome | None:
    stored = await server.services.event_store.get_event(event_id)
    return None if stored is None else stored.outcome


def metric(server: RunningServer, name: str, labels: dict[str, str]) -> float:
    value = server.services.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


@pytest.fixture
async def setup(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> AsyncIterator[Setup]:
    config = make_config(tmp_path / "hs", await db_factory.new_settings(), test_ca,
                         extra={"inbound": {"max_transaction_bytes": 512 * 1024}})
    async with running_server(config) as server, fake_remote(test_ca, tmp_path / "remote") as remote:
        room = remote.room()
        room.create_room()
        await room.teach(server)
        yield Setup(server, remote, room)


async def test_events_land_in_the_store(setup: Setup) -> None:
    s = setup
    msgs = [s.room.message(f"m{i}") for i in range(3)]
    status, body = await s.remote.send(s.server, msgs)
    assert status == 200
    assert body == {"pdus": {m.event_id: {} for m in msgs}}
    assert await s.server.services.inbound_worker.wait_idle(WAIT)
    for m in msgs:
        assert await outcome(s.server, m.event_id) is Outcome.ACCEPTED
    assert await s.server.services.event_store.get_forward_extremities(s.room.room_id) == [msgs[-1].event_id]
    assert await inbox_count(s.server) == 0
    assert metric(s.server, "hs_events_processed_total", {"outcome": "accepted"}) == 3


async def test_repeated_txn_id_enqueues_nothing(setup: Setup) -> None:
    s = setup
    worker = s.server.services.inbound_worker
    worker.pause()
    msg = s.room.message("once")
    first = await s.remote.send(s.server, [msg], txn_id="same")
    assert first[0] == 200 and await inbox_count(s.server) == 1
    # The same txnId again, even with other content: the first reply, nothing enqueued.
    other = s.room.message("other")
    again = await s.remote.send(s.server, [other], txn_id="same")
    assert again == first
    assert await inbox_count(s.server) == 1
    assert metric(s.server, "hs_inbound_repeated_transactions_total", {"origin": s.remote.server_name}) == 1
    worker.resume()
    assert await worker.wait_idle(WAIT)
    assert await outcome(s.server, msg.event_id) is Outcome.ACCEPTED
    assert await outcome(s.server, other.event_id) is None


async def test_one_txn_id_sent_twice_at_once_is_admitted_once(setup: Setup) -> None:
    """Two copies of one transaction racing through the door (a retry crossing the first
    attempt): one is admitted, the other answered as a repeat with the same reply."""
    s = setup
    worker = s.server.services.inbound_worker
    worker.pause()
    rounds = 8
    msgs = [s.room.message(f"raced {i}") for i in range(rounds)]
    for i, m in enumerate(msgs):
        first, second = await asyncio.gather(
            s.remote.send(s.server, [m], txn_id=f"race{i}"), s.remote.send(s.server, [m], txn_id=f"race{i}"),
        )
        assert first == second == (200, {"pdus": {m.event_id: {}}})
    assert await inbox_count(s.server) == rounds
    origin = {"origin": s.remote.server_name}
    assert metric(s.server, "hs_inbound_repeated_transactions_total", origin) == rounds
    assert metric(s.server, "hs_inbound_pdus_total", origin) == rounds  # counted once each
    worker.resume()
    assert await worker.wait_idle(WAIT)
    for m in msgs:
        assert await outcome(s.server, m.event_id) is Outcome.ACCEPTED


async def test_one_pdu_in_two_transactions_at_once_is_enqueued_once(setup: Setup) -> None:
    """The same PDUs in two different transactions racing through the door (a peer's
    retry under a new txnId, or an echo crossing the original): both are answered, the
    PDUs are enqueued once (on PostgreSQL the loser's statement hits the inbox's unique key
    and is run again) and processed once."""
    s = setup
    worker = s.server.services.inbound_worker
    worker.pause()
    rounds = 8
    batches = [[s.room.message(f"crossed {i}.{j}") for j in range(5)] for i in range(rounds)]
    for i, batch in enumerate(batches):
        first, second = await asyncio.gather(
            s.remote.send(s.server, batch, txn_id=f"a{i}"), s.remote.send(s.server, batch, txn_id=f"b{i}"),
        )
        expected = (200, {"pdus": {m.event_id: {} for m in batch}})
        assert first == second == expected
        assert await inbox_count(s.server) == 5 * (i + 1)
    worker.resume()
    assert await worker.wait_idle(WAIT)
    for batch in batches:
        for m in batch:
            assert await outcome(s.server, m.event_id) is Outcome.ACCEPTED
    assert metric(s.server, "hs_events_processed_total", {"outcome": "accepted"}) == 5 * rounds


async def test_worker_is_quiet_only_when_idle_and_no_send_was_answered_lately(setup: Setup) -> None:
    """What the garbage collection policy waits for (homeserver/gcpolicy.py)."""
    s = setup
    worker = s.server.services.inbound_worker
    assert await worker.wait_idle(WAIT)
    worker.pause()
    await s.remote.send(s.server, [s.room.message("wake up")])
    assert not worker.quiet(0.0)  # an entry waits
    worker.resume()
    assert await worker.wait_idle(WAIT)
    assert worker.quiet(0.0)
    assert not worker.quiet(3600.0)  # a /send was answered less than an hour ago
    with worker.answering():
        assert not worker.quiet(0.0)


async def test_a_sends_first_bytes_hold_the_worker_back_until_it_is_answered(setup: Setup) -> None:
    """The federation listener rings the worker's door bell on the first bytes of a
    ``PUT /send``, before aiohttp reaches the handler; other requests do not. The bell holds
    the worker back until that /send is answered, or DOOR_BELL_SECONDS if no handler follows."""
    from homeserver.federation.worker import DOOR_BELL_SECONDS

    s = setup
    worker = s.server.services.inbound_worker
    msg = s.room.message("ring")
    bells = worker.door_bells
    assert (await s.remote.send(s.server, [msg]))[0] == 200
    assert worker.door_bells == bells + 1
    assert await worker.wait_idle(WAIT)
    status, _ = await s.remote.get(s.server, f"/_matrix/federation/v1/event/{msg.event_id}")
    assert status == 200 and worker.door_bells == bells + 1
    # A bell without a handler holds back for DOOR_BELL_SECONDS ...
    worker.door_bell()
    assert worker.holding_back and not worker.quiet(0.0)
    await asyncio.sleep(DOOR_BELL_SECONDS * 3)
    assert not worker.holding_back
    # ... and one followed by its handler until the reply is written.
    worker.door_bell()
    with worker.answering():
        await asyncio.sleep(DOOR_BELL_SECONDS * 2)
        assert worker.holding_back
    assert not worker.holding_back


async def test_echoed_pdu_is_not_processed_again_and_is_counted(setup: Setup) -> None:
    s = setup
    worker = s.server.services.inbound_worker
    msg = s.room.message("echo me")
    await s.remote.send(s.server, [msg])
    assert await worker.wait_idle(WAIT)
    processed = worker.processed
    # The peer echoes the event back (a new transaction): answered {} at the door.
    status, body = await s.remote.send(s.server, [msg])
    assert status == 200 and body == {"pdus": {msg.event_id: {}}}
    assert await inbox_count(s.server) == 0
    assert await worker.wait_idle(WAIT)
    assert worker.processed == processed
    assert metric(s.server, "hs_inbound_duplicate_pdus_total", {"origin": s.remote.server_name}) == 1
    # An event still waiting in the inbox is not enqueued twice either.
    worker.pause()
    later = s.room.message("later")
    await s.remote.send(s.server, [later])
    await s.remote.send(s.server, [later])
    assert await inbox_count(s.server) == 1
    assert metric(s.server, "hs_inbound_duplicate_pdus_total", {"origin": s.remote.server_name}) == 2
    worker.resume()
    assert await worker.wait_idle(WAIT)


async def test_send_answers_while_the_worker_is_held(setup: Setup) -> None:
    s = setup
    worker = s.server.services.inbound_worker
    worker.pause()  # the gate
    sent = []
    for i in range(5):
        batch = [s.room.message(f"held {i}.{j}") for j in range(10)]
        sent += batch
        status, body = await s.remote.send(s.server, batch)
        assert status == 200 and set(body["pdus"]) == {e.event_id for e in batch}
    # Nothing was processed, and no request went out to the remote: answered first.
    for e in sent:
        assert await outcome(s.server, e.event_id) is None
    assert s.remote.requests == []
    assert await inbox_count(s.server) == 50
    worker.resume()
    assert await worker.wait_idle(WAIT)
    for e in sent:
        assert await outcome(s.server, e.event_id) is Outcome.ACCEPTED
    assert await inbox_count(s.server) == 0


async def test_inbox_survives_a_restart(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    config = make_config(tmp_path / "hs", await db_factory.new_settings(), test_ca)
    async with fake_remote(test_ca, tmp_path / "remote") as remote:
        room = remote.room()
        room.create_room()
        async with running_server(config) as server:
            await room.teach(server)
            server.services.inbound_worker.pause()
            msgs = [room.message(f"before crash {i}") for i in range(4)]
            status, _ = await remote.send(server, msgs)
            assert status == 200
        async with running_server(config) as server:
            assert await server.services.inbound_worker.wait_idle(WAIT)
            for m in msgs:
                assert await outcome(server, m.event_id) is Outcome.ACCEPTED
            assert await inbox_count(server) == 0


BAD: list[tuple[str, Any, int, str]] = [
    ("not an object", [1, 2], 400, "M_BAD_JSON"),
    ("pdus missing", {"origin_server_ts": 1}, 400, "M_BAD_JSON"),
    ("pdus not a list", {"origin_server_ts": 1, "pdus": {}}, 400, "M_BAD_JSON"),
    ("pdu not an object", {"origin_server_ts": 1, "pdus": ["x"]}, 400, "M_BAD_JSON"),
    ("ts not an integer", {"origin_server_ts": "1", "pdus": []}, 400, "M_BAD_JSON"),
    ("edus not a list", {"origin_server_ts": 1, "pdus": [], "edus": 3}, 400, "M_BAD_JSON"),
    ("edu without type", {"origin_server_ts": 1, "pdus": [], "edus": [{"content": {}}]}, 400, "M_BAD_JSON"),
    ("too many edus", {"origin_server_ts": 1, "pdus": [], "edus": [{"edu_type": "m.typing"}] * 101},
     400, "M_BAD_JSON"),
    ("wrong origin", {"origin": "elsewhere.test", "origin_server_ts": 1, "pdus": []}, 403, "M_FORBIDDEN"),
]


async def test_bad_transactions_get_errors_and_leave_the_inbox(setup: Setup) -> None:
    s = setup
    s.server.services.inbound_worker.pause()
    queued = s.room.message("queued")
    await s.remote.send(s.server, [queued])
    assert await inbox_count(s.server) == 1
    for name, body, status, errcode in BAD:
        if isinstance(body, dict) and "origin" not in body:
            body = {"origin": s.remote.server_name, **body}
        got = await s.remote.send_raw(s.server, f"bad-{name}", body)
        assert got[0] == status and got[1]["errcode"] == errcode, name
    # More than 50 PDUs.
    many = [s.room.message(f"many {i}", add=False).pdu for i in range(51)]
    got = await s.remote.send_raw(s.server, "bad-many", s.remote.transaction(many))
    assert got[0] == 400 and got[1]["errcode"] == "M_BAD_JSON"
    # Not JSON at all (signed as if it had no body).
    got = await s.remote.send_raw(s.server, "bad-notjson", None, raw=b"{nope")
    assert got[0] == 400 and got[1]["errcode"] == "M_NOT_JSON"
    # Larger than inbound.max_transaction_bytes.
    huge = s.remote.transaction([{"pad": "x" * (s.server.services.config.inbound.max_transaction_bytes + 10)}])
    got = await s.remote.send_raw(s.server, "bad-huge", huge)
    assert got[0] == 413 and got[1]["errcode"] == "M_TOO_LARGE", got
    # txnId longer than 255 bytes.
    got = await s.remote.send_raw(s.server, "t" * 300, s.remote.transaction([]))
    assert got[0] == 400
    assert await inbox_count(s.server) == 1
    assert await s.server.services.db.fetchval(
        "SELECT COUNT(*) FROM federation_transactions WHERE txn_id LIKE 'bad-%'"
    ) == 0
    # And the server is healthy: a good transaction still goes through.
    s.server.services.inbound_worker.resume()
    ok = s.room.message("fine")
    assert (await s.remote.send(s.server, [ok]))[0] == 200
    assert await s.server.services.inbound_worker.wait_idle(WAIT)
    assert await outcome(s.server, ok.event_id) is Outcome.ACCEPTED


async def test_unknown_room_gets_an_error_entry(setup: Setup) -> None:
    s = setup
    other = s.remote.room(localpart="elsewhere")
    create = other.create_room()[0]
    status, body = await s.remote.send(s.server, [create])
    assert status == 200
    assert list(body["pdus"].values()) == [{"error": "Unknown room"}]
    assert await inbox_count(s.server) == 0
    # Many PDUs of the unknown room: each gets its entry, the room is looked up once.
    store = s.server.services.event_store
    lookups: list[str] = []
    real = store.get_room_version

    async def counted(room_id: str) -> Any:
        lookups.append(room_id)
        return await real(room_id)

    store.get_room_version = counted  # type: ignore[method-assign]
    try:
        many = [other.message(f"lost {i}") for i in range(20)]
        status, body = await s.remote.send(s.server, many)
    finally:
        del store.get_room_version
    assert status == 200
    assert body["pdus"] == {e.event_id: {"error": "Unknown room"} for e in many}
    assert lookups == [other.room_id]
    # A kick of one of our users from an unknown room is taken in only while that user
    # holds an invite to it or a knock on it (test_knocking.py); here none stands.
    ours = f"@victim:{s.server.services.config.server_name}"
    kick = other.build("m.room.member", other.creator, {"membership": "leave"}, ours)
    status, body = await s.remote.send(s.server, [kick])
    assert status == 200 and body["pdus"] == {kick.event_id: {"error": "Unknown room"}}
    assert await inbox_count(s.server) == 0


async def test_edus_from_the_origins_own_users(setup: Setup) -> None:
    s = setup
    me, stranger = f"@typist:{s.remote.server_name}", "@mallory:other.test"
    edus = [
        {"edu_type": "m.typing", "content": {"room_id": s.room.room_id, "user_id": me, "typing": True}},
        {"edu_type": "m.typing", "content": {"room_id": s.room.room_id, "user_id": stranger, "typing": True}},
        {"edu_type": "m.receipt", "content": {s.room.room_id: {"m.read": {
            me: {"event_ids": [s.room.events[-1].event_id], "data": {"ts": 1}},
            stranger: {"event_ids": [s.room.events[-1].event_id], "data": {"ts": 1}},
        }}}},
        {"edu_type": "org.example.unknown", "content": {}},
    ]
    status, _ = await s.remote.send(s.server, [], edus)
    assert status == 200
    assert await s.server.services.inbound_worker.wait_idle(WAIT)
    db = s.server.services.db
    assert await db.fetchall("SELECT user_id FROM typing") == [(me,)]
    rows = await db.fetchall("SELECT user_id, event_ids FROM receipts")
    assert rows == [(me, json.dumps([s.room.events[-1].event_id]))]
    assert metric(s.server, "hs_inbound_edus_dropped_total",
                  {"origin": s.remote.server_name, "reason": "foreign_user"}) == 2


async def test_a_body_with_floats_is_verified_and_keyed_as_its_sender_encoded_it(setup: Setup) -> None:
    """The door encodes float-free bodies with a faster canonical JSON encoder, which
    writes some floats differently (``1e-05``); a body holding floats takes the reference
    encoder, so the request signature still verifies and each PDU is keyed by the event ID
    its sender computed. (A float makes the PDU itself invalid: the worker drops it.)"""
    s = setup
    good = s.room.message("fine")
    floaty = s.room.build("m.room.message", s.room.creator, {"msgtype": "m.text", "body": "x", "weight": 1e-05},
                          add=False)
    edus = [{"edu_type": "org.example.metrics", "content": {"ratio": 2.5e-07}}]
    status, body = await s.remote.send(s.server, [good, floaty], edus)
    assert status == 200, body
    assert body == {"pdus": {good.event_id: {}, floaty.event_id: {}}}
    assert await s.server.services.inbound_worker.wait_idle(WAIT)
    assert await outcome(s.server, good.event_id) is Outcome.ACCEPTED
    assert await outcome(s.server, floaty.event_id) is None  # not canonical JSON: dropped
    assert metric(s.server, "hs_events_processed_total", {"outcome": "dropped"}) == 1


async def test_inbox_age_gauge_is_the_oldest_entrys(setup: Setup) -> None:
    """hs_inbox_oldest_age_seconds, read on each scrape: the age of the entry waiting longest
    (0 when the inbox is empty)."""
    import time

    from homeserver.ops import refresh_database_gauges

    s = setup
    services = s.server.services
    worker = services.inbound_worker
    assert await worker.wait_idle(WAIT)
    await refresh_database_gauges(services.db, services.metrics)
    assert metric(s.server, "hs_inbox_oldest_age_seconds", {}) == 0
    worker.pause()
    try:
        await s.remote.send(s.server, [s.room.message("first")])
        await s.remote.send(s.server, [s.room.message("second")])
        now_ms = int(time.time() * 1000)
        first_id = await services.db.fetchval("SELECT MIN(id) FROM inbox")
        await services.db.execute("UPDATE inbox SET received_ts = ? WHERE id = ?", now_ms - 100_000, first_id)
        await services.db.execute("UPDATE inbox SET received_ts = ? WHERE id <> ?", now_ms - 5_000, first_id)
        await refresh_database_gauges(services.db, services.metrics)
        assert 99 <= metric(s.server, "hs_inbox_oldest_age_seconds", {}) <= 110
    finally:
        worker.resume()
    assert await worker.wait_idle(WAIT)
