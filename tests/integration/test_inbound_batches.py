"""Large inbound batches: the state-free checks (format, signatures, hashes) run in the
check helper processes, and the events' writes are group-committed after the worker
moved on (both engines). Real servers on loopback, a fake remote with its own keys.

- a batch checked in the helpers gives the same outcomes as inline checks: the good events
  accepted in order, a tampered one stored redacted, a forged one dropped;
- a group commit that fails (a fault injected in the database itself, once) loses nothing:
  the entries are handed back to the inbox and processed again, on both engines.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from homeserver.storage.events import Outcome
from tests.conftest import DatabaseFactory
from tests.integration.test_inbound_send import WAIT, inbox_count, metric, outcome
from tests.remote import FakeRemote, RemoteRoom, fake_remote
from tests.servers import RunningServer, make_config, running_server


async def _send_held(server: RunningServer, remote: FakeRemote, txn: str, pdus: list[dict[str, Any]]) -> None:
    """Send one transaction while the worker is held, so it claims the batch at once."""
    worker = server.services.inbound_worker
    worker.pause()
    status, body = await remote.send_raw(server, txn, remote.transaction(pdus))
    assert status == 200, body
    worker.resume()
    assert await worker.wait_idle(WAIT)


async def _batch_outcomes(
    db_factory: DatabaseFactory, tmp_path: Path, ca: tuple[Path, Path], processes: int
) -> tuple[float, list[str]]:
    config = make_config(tmp_path / f"hs{processes}", await db_factory.new_settings(), ca,
                         extra={"inbound": {"check_processes": processes}})
    async with running_server(config) as server, fake_remote(ca, tmp_path / f"r{processes}") as remote:
        room: RemoteRoom = remote.room()
        room.create_room()
        await room.teach(server)
        good = [room.message(f"batch {i}") for i in range(36)]
        tampered = room.message("original", add=False)
        forged = room.message("forged", add=False)
        pdus = [e.pdu for e in good]
        pdus.append(dict(tampered.pdu, content={"msgtype": "m.text", "body": "changed"}))
        pdus.append(dict(forged.pdu, signatures={remote.server_name: {remote.key.key_id: "A" * 86}}))
        await _send_held(server, remote, "batch", pdus)
        store = server.services.event_store
        for e in good:
            assert await outcome(server, e.event_id) is Outcome.ACCEPTED
        stored = await store.get_event(tampered.event_id)
        assert stored is not None and stored.event.content == {}
        assert await outcome(server, forged.event_id) is None
        assert metric(server, "hs_events_processed_total", {"outcome": "dropped"}) == 1
        assert await inbox_count(server) == 0
        orderings = [
            await server.services.db.fetchval("SELECT stream_ordering FROM events WHERE event_id = ?", e.event_id)
            for e in good
        ]
        assert orderings == sorted(orderings)  # in the room's order
        extremities = await store.get_forward_extremities(room.room_id)
        return metric(server, "hs_inbound_helper_checks_total", {}), extremities


async def test_large_batch_is_checked_in_helpers_with_inline_outcomes(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    pooled, pooled_ext = await _batch_outcomes(db_factory, tmp_path, test_ca, processes=1)
    inline, inline_ext = await _batch_outcomes(db_factory, tmp_path, test_ca, processes=0)
    assert pooled == 38  # every PDU of the batch went through the helpers
    assert inline == 0
    assert len(pooled_ext) == 1 and len(inline_ext) == 1


async def _inject_fault_once(server: RunningServer, victim: str) -> Callable[[], Awaitable[int]]:
    """Make the first insert of ``victim`` into events abort its transaction, inside the
    database itself; returns how to read how many times it fired."""
    db = server.services.db
    if db.engine == "sqlite":
        failed: list[str] = []

        def fail_once(event_id: str) -> int:
            if event_id == victim and not failed:
                failed.append(event_id)
                return 1
            return 0

        trigger = (
            "CREATE TEMP TRIGGER inject BEFORE INSERT ON events WHEN fail_once(NEW.event_id)"
            " BEGIN SELECT RAISE(ABORT, 'injected fault'); END"
        )
        # On both connections (a temporary trigger is the connection's own): group commits
        # run on the side connection.
        await db._conn.create_function("fail_once", 1, fail_once)  # type: ignore[attr-defined]
        await db.execute(trigger)
        side = db._side  # type: ignore[attr-defined]
        side.create_function("fail_once", 1, fail_once)
        side.execute(trigger)

        async def fired_sqlite() -> int:
            return len(failed)

        return fired_sqlite
    # PostgreSQL: a sequence is not rolled back with the transaction it aborts.
    await db.execute("CREATE SEQUENCE inject_fired")
    await db.execute(
        "CREATE FUNCTION inject() RETURNS trigger AS $$ BEGIN"
        f" IF NEW.event_id = '{victim}' AND nextval('inject_fired') = 1 THEN"
        " RAISE EXCEPTION 'injected fault'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql"
    )
    await db.execute("CREATE TRIGGER inject BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION inject()")

    async def fired_postgres() -> int:
        value = await db.fetchval("SELECT last_value FROM inject_fired WHERE is_called")
        return int(value or 0)

    return fired_postgres


async def test_failed_group_commit_hands_entries_back_and_loses_nothing(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    config = make_config(tmp_path / "hs", await db_factory.new_settings(), test_ca)
    async with running_server(config) as server, fake_remote(test_ca, tmp_path / "r") as remote:
        room = remote.room()
        room.create_room()
        await room.teach(server)
        msgs = [room.message(f"m{i}") for i in range(30)]
        fired = await _inject_fault_once(server, msgs[12].event_id)
        await _send_held(server, remote, "faulty", [m.pdu for m in msgs])
        assert await fired() >= 1
        assert metric(server, "hs_inbound_commit_retries_total", {}) >= 1
        for m in msgs:
            assert await outcome(server, m.event_id) is Outcome.ACCEPTED, m.event_id
        db = server.services.db
        count = await db.fetchval(
            f"SELECT COUNT(*) FROM events WHERE event_id IN ({','.join('?' * len(msgs))})",
            *[m.event_id for m in msgs],
        )
        assert count == len(msgs)
        assert await server.services.event_store.get_forward_extremities(room.room_id) == [msgs[-1].event_id]
        assert await inbox_count(server) == 0
        # Stream orderings still follow the room's order (allocated again after the failure).
        orderings = [
            await db.fetchval("SELECT stream_ordering FROM events WHERE event_id = ?", m.event_id) for m in msgs
        ]
        assert orderings == sorted(orderings)


async def test_deferred_writes_group_commit_and_fail_together(db_factory: DatabaseFactory) -> None:
    from homeserver.storage.database import DeferredWriteError

    db = await db_factory.open()
    try:
        await db.execute("CREATE TABLE t (k TEXT PRIMARY KEY)")
        failures: list[int] = []
        db.on_deferred_failure(lambda: failures.append(1))

        def insert(k: str) -> asyncio.Future[None]:
            return db.defer([("INSERT INTO t (k) VALUES (?)", (k,), False)])

        first = [insert("a"), insert("b")]
        # A read waits for what was deferred before it.
        assert [r[0] for r in await db.fetchall("SELECT k FROM t ORDER BY k")] == ["a", "b"]
        assert await asyncio.gather(*first) == [None, None]
        # So does a transaction.
        pending = insert("c")
        async with db.transaction() as conn:
            assert await conn.fetchval("SELECT COUNT(*) FROM t WHERE k = 'c'") == 1
        assert pending.done()
        # A failing write fails its group and everything deferred after it.
        doomed = [insert("x"), insert("a"), insert("y")]
        results = await asyncio.gather(*doomed, return_exceptions=True)
        assert all(isinstance(r, DeferredWriteError) for r in results)
        assert failures == [1]
        assert [r[0] for r in await db.fetchall("SELECT k FROM t ORDER BY k")] == ["a", "b", "c"]
        # Deferring works again afterwards; many writes of one statement commit together.
        await asyncio.gather(*[insert(f"n{i:03d}") for i in range(100)])
        assert await db.fetchval("SELECT COUNT(*) FROM t") == 103
    finally:
        await db.close()


async def test_sqlite_group_commits_are_checkpointed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Group commits run on the side connection, which never checkpoints (a checkpoint on
    the event loop's thread would block it); a checkpoint thread of its own does, every few
    groups, in the idle scheduling class, so the WAL does not grow without bound."""
    import homeserver.storage.engine.sqlite as database

    monkeypatch.setattr(database, "CHECKPOINT_EVERY_GROUPS", 2)
    path = tmp_path / "wal.sqlite"
    db = await database.SqliteDatabase.open(str(path))
    try:
        await db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
        blob = "x" * 20_000
        for i in range(200):  # about 4 MB in all, one group each
            await db.defer([("INSERT INTO t (k, v) VALUES (?, ?)", (i, blob), False)])
        assert await db.fetchval("SELECT COUNT(*) FROM t") == 200
        # A checkpoint lets the next writer start the WAL from its beginning again.
        assert await asyncio.to_thread(os.path.getsize, f"{path}-wal") < 1_000_000
        # They ran on the checkpoint thread, which gives way to every other (Linux).
        checkpointer = db._checkpointer
        assert checkpointer is not None and checkpointer.checkpoints >= 90
        if hasattr(os, "SCHED_IDLE"):
            assert checkpointer.native_id is not None
            assert os.sched_getscheduler(checkpointer.native_id) == os.SCHED_IDLE
            assert os.sched_getscheduler(0) != os.SCHED_IDLE
    finally:
        await db.close()


async def test_sqlite_read_behind_many_groups_lets_the_loop_turn(tmp_path: Path) -> None:
    """A read on the main connection first commits what was deferred before it, group by
    group on the event loop's thread: the loop turns between groups (a /send is not held
    up for all of them), and what is deferred meanwhile is left to the group-commit task."""
    import homeserver.storage.engine.sqlite as database

    db = await database.SqliteDatabase.open(str(tmp_path / "turns.sqlite"))
    try:
        await db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY)")
        groups = 6
        writes = [db.defer([("INSERT INTO t (k) VALUES (?)", (i,), False)])
                  for i in range(groups * database.DEFER_GROUP_MAX)]
        turns: list[int] = []
        first_settled: list[int] = []
        last_settled: list[int] = []
        writes[0].add_done_callback(lambda _: first_settled.append(len(turns)))
        writes[-1].add_done_callback(lambda _: last_settled.append(len(turns)))
        late: list[asyncio.Future[None]] = []

        def tick() -> None:
            turns.append(len(turns))
            if len(late) < 3:  # written while the read waits: not the read's to wait for
                late.append(db.defer([("INSERT INTO t (k) VALUES (?)", (-len(late) - 1,), False)]))
            if len(turns) < 100:
                asyncio.get_running_loop().call_soon(tick)

        asyncio.get_running_loop().call_soon(tick)
        count = await db.fetchval("SELECT COUNT(*) FROM t WHERE k >= 0")
        assert count == groups * database.DEFER_GROUP_MAX
        # The loop turned between the groups (the first group's writes settled turns
        # before the last group's).
        assert last_settled[0] - first_settled[0] >= groups - 2
        await asyncio.gather(*late)
        assert await db.fetchval("SELECT COUNT(*) FROM t") == count + 3
    finally:
        await db.close()


async def test_group_commits_wait_a_bounded_time_for_a_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpoint thread is idle-class and may not get a core on a saturated machine:
    group commits wait for it CHECKPOINT_WAIT_SECONDS at most, then go on."""
    import time

    import homeserver.storage.engine.sqlite as database
    import homeserver.storage.engine.sqlite_files as sqlite_files

    monkeypatch.setattr(sqlite_files, "CHECKPOINT_WAIT_SECONDS", 0.2)
    monkeypatch.setattr(database, "CHECKPOINT_EVERY_GROUPS", 1)
    db = await database.SqliteDatabase.open(str(tmp_path / "late.sqlite"))
    try:
        await db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY)")
        checkpointer = db._checkpointer
        assert checkpointer is not None
        await asyncio.to_thread(checkpointer.close)  # a thread that never runs again
        started = time.monotonic()
        async with asyncio.timeout(10):  # the test's own bound: without the wait's, it hung
            for i in range(3):
                await db.defer([("INSERT INTO t (k) VALUES (?)", (i,), False)])
            assert await db.fetchval("SELECT COUNT(*) FROM t") == 3
        assert time.monotonic() - started < 2.0  # three late checkpoints, 0.2 s each at most
    finally:
        await db.close()
