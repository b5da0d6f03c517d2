"""A destination that is down or dead: its queue waits in the database (surviving a
restart), backoff grows, others are served meanwhile; it drains when the destination
comes back (all of it, in order: 500 messages after an outage), retried at once when it
contacts us, caught up (newest event of each room) when its queue grew past the replay
bound (catch_up_max_pdus, catch_up_max_age_hours) or it was past the dead horizon."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from homeserver.config import Config
from homeserver.server import RunningServer
from tests.conftest import DatabaseFactory
from tests.local_room import LocalRoom
from tests.outbound_receiver import Receiver, eventually
from tests.servers import make_config, running_server

PROBE = "/_matrix/federation/v1/query/anything"


def metric(server: RunningServer, name: str, labels: dict[str, str] | None = None) -> float:
    return server.services.metrics.registry.get_sample_value(name, labels or {}) or 0.0


def config(tmp: Path, db: dict[str, str], ca: tuple[Path, Path], **outbound: Any) -> Config:
    out = {"backoff_initial_seconds": 0.2, "backoff_factor": 2.0, "backoff_ceiling_seconds": 1.6,
           "backoff_jitter": 0.0, "send_timeout": 5.0, **outbound}
    return make_config(tmp / "a", db, ca, extra={
        "federation": {"connect_timeout": 2.0, "request_timeout": 5.0}, "outbound": out})


@pytest.fixture
async def peers(tmp_path: Path, test_ca: tuple[Path, Path]) -> AsyncIterator[tuple[Receiver, Receiver]]:
    b, c = Receiver(tmp_path / "b", test_ca), Receiver(tmp_path / "c", test_ca)
    await b.start()
    await c.start()
    try:
        yield b, c
    finally:
        await b.close()
        await c.close()


async def room_with(a: RunningServer, *peers: Receiver) -> LocalRoom:
    room = await LocalRoom(a.services).create()
    for i, p in enumerate(peers):
        await room.join_remote(f"@u{i}:{p.server_name}")
    return room


async def test_down_destination_queues_backs_off_and_drains_after_restart(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path], peers: tuple[Receiver, Receiver]
) -> None:
    b, c = peers
    cfg = config(tmp_path, await db_factory.new_settings(), test_ca, catch_up_max_pdus=1000)
    async with running_server(cfg) as a:
        sender = a.services.sender
        room = await room_with(a, b, c)
        await c.go_down()
        sent = [await room.message(f"m{i}") for i in range(5)]
        # b is served while c is down
        await b.wait_for(lambda r: len(r.pdu_ids()) == 5)
        intervals: list[int] = []

        async def failed_three_times() -> bool:
            st = await sender.get_state(c.server_name)
            if st is not None and st.retry_interval_ms and st.retry_interval_ms not in intervals:
                intervals.append(st.retry_interval_ms)
            return st is not None and st.failure_count >= 3

        await eventually(failed_three_times)
        assert intervals[:3] == [200, 400, 800]  # exponential (jitter 0 here)
        assert c.server_name in sender.destinations_in_backoff()
        assert await sender.queue_depth(c.server_name) == (5, 0)
        assert metric(a, "hs_outbound_destinations_in_backoff") == 1
        failures_before = (await sender.get_state(c.server_name)).failure_count  # type: ignore[union-attr]
        assert metric(a, "hs_outbound_transactions_total", {"destination": c.server_name, "result": "failed"}) >= 3
    # Restart while c is down: the queue and the retry state are in the database.
    async with running_server(cfg) as a2:
        sender = a2.services.sender
        assert await sender.queue_depth(c.server_name) == (5, 0)
        st = await sender.get_state(c.server_name)
        assert st is not None and st.failure_count >= failures_before and st.pending_txn_id is not None
        await c.start()
        await c.wait_for(lambda r: len(r.pdu_ids()) >= 5)
        assert c.pdu_ids() == [e.event_id for e in sent]  # all, in order, once
        # The transaction that failed before the restart was retried with the same txnId.
        assert c.transactions[0].txn_id == st.pending_txn_id

        async def healthy() -> bool:
            s = await sender.get_state(c.server_name)
            return s is not None and s.failure_count == 0 and not sender.destinations_in_backoff()

        await eventually(healthy)
    assert b.pdu_counts() == {e.event_id: 1 for e in sent}


async def test_contact_from_a_backed_off_destination_retries_it_at_once(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path], peers: tuple[Receiver, Receiver]
) -> None:
    b, c = peers
    cfg = config(tmp_path, await db_factory.new_settings(), test_ca,
                 backoff_initial_seconds=600.0, backoff_ceiling_seconds=3600.0)
    async with running_server(cfg) as a:
        sender = a.services.sender
        room = await room_with(a, c)
        await c.go_down()
        msg = await room.message("while you were out")

        async def failed() -> bool:
            st = await sender.get_state(c.server_name)
            return st is not None and st.failure_count >= 1

        await eventually(failed)
        st = await sender.get_state(c.server_name)
        assert st is not None and st.next_attempt_ts > st.retry_interval_ms  # ~10 minutes away
        await c.start()
        # Any authenticated request from c (here a 404 query) retries it now, not in 10 min.
        assert await c.signed_get(a.services.config.server_name, PROBE) == 404
        await c.wait_for(lambda r: msg.event_id in r.pdu_counts(), timeout=20)
        assert c.pdu_counts()[msg.event_id] == 1
        # A healthy destination's requests cost nothing (no state change).
        assert await b.signed_get(a.services.config.server_name, PROBE) == 404


async def test_everything_queued_during_an_outage_is_replayed_in_order(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path], peers: tuple[Receiver, Receiver]
) -> None:
    """500 of our messages sent while c is dark: when it is back it gets all 500 by push,
    in order, each once, in transactions of at most 50; nothing is collapsed."""
    b, c = peers
    cfg = config(tmp_path, await db_factory.new_settings(), test_ca)  # the default bounds
    async with running_server(cfg) as a:
        sender = a.services.sender
        room = await room_with(a, b, c)
        before = len(c.pdu_ids())
        await c.go_down()
        sent = [await room.message(f"m{i}") for i in range(500)]

        async def failing() -> bool:
            st = await sender.get_state(c.server_name)
            return st is not None and st.failure_count >= 1

        await eventually(failing)
        assert await sender.queue_depth(c.server_name) == (500, 0)
        await c.start()
        await c.wait_for(lambda r: len(r.pdu_ids()) >= before + 500, timeout=60)
        assert c.pdu_ids()[before:] == [e.event_id for e in sent]  # all, in order, once
        assert max(len(t.pdus) for t in c.transactions) <= 50
        assert metric(a, "hs_outbound_catch_ups_total", {"reason": "threshold"}) == 0
        assert metric(a, "hs_outbound_catch_ups_total", {"reason": "age"}) == 0
        await b.wait_for(lambda r: len(r.pdu_ids()) >= before + 500)
        assert b.pdu_ids()[before:] == [e.event_id for e in sent]


async def test_a_backlog_waits_for_each_transaction_to_be_held_before_the_next(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path], peers: tuple[Receiver, Receiver]
) -> None:
    """A receiver that acknowledges /send before it holds the events (Synapse stages them,
    and prunes a room's staging area past 100): after each full transaction of a backlog,
    the next is sent only once GET /event shows the last event of the one before."""
    _, c = peers
    c.event_hidden_polls = 2
    cfg = config(tmp_path, await db_factory.new_settings(), test_ca)
    async with running_server(cfg) as a:
        sender = a.services.sender
        room = await room_with(a, c)
        await c.go_down()
        sent = [await room.message(f"m{i}") for i in range(120)]

        async def failing() -> bool:
            st = await sender.get_state(c.server_name)
            return st is not None and st.failure_count >= 1

        await eventually(failing)
        await c.start()
        await c.wait_for(lambda r: len(r.pdu_ids()) >= 120)
        assert c.pdu_ids() == [e.event_id for e in sent]
    sends = [i for i, entry in enumerate(c.requests_log) if entry[0] == "send"]
    sizes = [c.requests_log[i][2] for i in sends]
    # (The first is the transaction that failed, retried as it was: what was queued then.)
    assert sum(sizes) == 120 and sizes.count(50) >= 2
    for n, (this, following) in enumerate(itertools.pairwise(sends)):
        last = c.pdu_ids()[sum(sizes[: n + 1]) - 1]
        polls = [e for e in c.requests_log[this:following] if e[0] == "event"]
        if sizes[n] == 50:
            # Asked about its last event until it was there (two 404s, then 200), then sent on.
            assert polls == [("event", last, 404), ("event", last, 404), ("event", last, 200)]
        else:
            assert polls == []  # not a full transaction: not waited for
    # The tail (nothing behind it) is not waited for.
    assert not [e for e in c.requests_log[sends[-1]:] if e[0] == "event"]


async def test_queue_older_than_the_age_bound_is_caught_up(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path], peers: tuple[Receiver, Receiver]
) -> None:
    _, c = peers
    # 0.0002 h: the oldest queued PDU is past the bound 0.72 s after it was queued.
    cfg = config(tmp_path, await db_factory.new_settings(), test_ca, catch_up_max_age_hours=0.0002)
    async with running_server(cfg) as a:
        sender = a.services.sender
        room = await room_with(a, c)
        await c.go_down()
        sent = [await room.message(f"m{i}") for i in range(4)]

        async def collapsed() -> bool:
            return await sender.queue_depth(c.server_name) == (1, 0)

        await eventually(collapsed)
        assert metric(a, "hs_outbound_catch_ups_total", {"reason": "age"}) >= 1
        before = len(c.pdu_ids())
        await c.start()
        await c.wait_for(lambda r: len(r.pdu_ids()) > before)
        assert c.pdu_ids()[before:] == [sent[-1].event_id]  # the marker only


async def test_queue_past_the_pdu_bound_is_caught_up(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path], peers: tuple[Receiver, Receiver]
) -> None:
    b, c = peers
    cfg = config(tmp_path, await db_factory.new_settings(), test_ca, catch_up_max_pdus=5)
    async with running_server(cfg) as a:
        sender = a.services.sender
        r1 = await room_with(a, b, c)
        r2 = await room_with(a, c)
        await c.go_down()
        first = [await r1.message(f"r1 {i}") for i in range(8)]
        second = [await r2.message(f"r2 {i}") for i in range(4)]

        async def collapsed() -> bool:
            return await sender.queue_depth(c.server_name) == (2, 0)

        await eventually(collapsed)  # a failure with 12 queued > 5: one marker per room
        assert metric(a, "hs_outbound_catch_ups_total", {"reason": "threshold"}) >= 1
        late = await r1.message("after the collapse")  # replaces r1's marker
        assert await sender.queue_depth(c.server_name) == (2, 0)
        await c.start()
        await c.wait_for(lambda r: len(r.pdu_ids()) >= 2)
        assert sorted(c.pdu_ids()) == sorted([late.event_id, second[-1].event_id])
        # b, healthy all along, got everything in order
        await b.wait_for(lambda r: len(r.pdu_ids()) == len(first) + 1)
        assert b.pdu_ids() == [e.event_id for e in [*first, late]]


async def test_dead_destination_costs_nothing_until_it_calls(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path], peers: tuple[Receiver, Receiver]
) -> None:
    _, c = peers
    # dead after ~0.86 s of failures
    cfg = config(tmp_path, await db_factory.new_settings(), test_ca, dead_after_days=0.00001,
                 backoff_ceiling_seconds=0.4)
    async with running_server(cfg) as a:
        sender = a.services.sender
        r1 = await room_with(a, c)
        r2 = await room_with(a, c)
        await c.go_down()
        await r1.message("one")
        await r2.message("two")
        await r1.message("three")

        async def dead() -> bool:
            st = await sender.get_state(c.server_name)
            return st is not None and st.dead

        await eventually(dead)
        await eventually(lambda: metric(a, "hs_outbound_destinations_dead") == 1)
        assert await sender.queue_depth(c.server_name) == (2, 0)  # the catch-up markers
        tries = metric(a, "hs_outbound_transactions_total", {"destination": c.server_name, "result": "failed"})
        newest = await r1.message("four")  # queued (as r1's marker), not tried
        await asyncio.sleep(1.0)
        assert metric(a, "hs_outbound_transactions_total",
                      {"destination": c.server_name, "result": "failed"}) == tries
        assert await sender.queue_depth(c.server_name) == (2, 0)
        # It comes back and says so: caught up with the newest event of each room.
        await c.start()
        assert await c.signed_get(a.services.config.server_name, PROBE) == 404
        await c.wait_for(lambda r: len(r.pdu_ids()) >= 2)
        assert newest.event_id in c.pdu_counts() and len(c.pdu_ids()) == 2

        async def healthy() -> bool:
            st = await sender.get_state(c.server_name)
            return st is not None and st.failure_count == 0

        await eventually(healthy)
        await eventually(lambda: metric(a, "hs_outbound_destinations_dead") == 0)
    # and a restart remembers nothing dead any more
    async with running_server(cfg) as a2:
        st = await a2.services.sender.get_state(c.server_name)
        assert st is not None and not st.dead and st.failure_count == 0


async def test_to_device_messages_survive_backoff_trimming_and_catch_up(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path], peers: tuple[Receiver, Receiver]
) -> None:
    """A to-device message can carry a room key: an outage that collapses the queue to the
    catch-up marker, or trims it to max_queued_edus, keeps every to-device EDU (queued for a
    destination in catch-up too), while the other EDUs are dropped as before."""
    _, c = peers
    cfg = config(tmp_path, await db_factory.new_settings(), test_ca, catch_up_max_pdus=5, max_queued_edus=2)
    async with running_server(cfg) as a:
        sender = a.services.sender
        me = f"@alice:{a.services.config.server_name}"
        room = await room_with(a, c)
        await c.go_down()

        def to_device(i: int) -> dict[str, Any]:
            return {"sender": me, "type": "m.room_key", "message_id": f"m{i}",
                    "messages": {f"@u0:{c.server_name}": {"DEV": {"i": i}}}}

        for i in range(3):
            assert await sender.enqueue_edu("m.direct_to_device", to_device(i), [c.server_name])
        for _ in range(8):
            await room.message("while down")

        async def collapsed() -> bool:
            st = await sender.get_state(c.server_name)
            return st is not None and st.catch_up

        await eventually(collapsed)
        typing = {"room_id": room.room_id, "user_id": me, "typing": True}
        for i in range(3, 8):  # queued in catch-up and in backoff, past max_queued_edus
            assert await sender.enqueue_edu("m.direct_to_device", to_device(i), [c.server_name])
            assert await sender.enqueue_edu("m.typing", typing, [c.server_name])
        assert (await sender.queue_depth(c.server_name))[1] == 8  # the typing EDUs were not queued
        await c.start()
        assert await c.signed_get(a.services.config.server_name, PROBE) == 404

        def edus(r: Receiver, edu_type: str) -> list[dict[str, Any]]:
            return [e for t in r.transactions for e in t.edus if e.get("edu_type") == edu_type]

        await c.wait_for(lambda r: len(edus(r, "m.direct_to_device")) >= 8)
        assert [e["content"]["message_id"] for e in edus(c, "m.direct_to_device")] == [f"m{i}" for i in range(8)]
        assert edus(c, "m.typing") == []
