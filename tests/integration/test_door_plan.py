"""PostgreSQL: the /send door's statement runs on connections of its own that plan it once
(a generic plan), and that plan takes the unique indexes even when it is made on empty
tables, as a new server's are: it must never scan the events table or the inbox. And the
statement, which inserts without ON CONFLICT, runs again when a concurrent /send enqueued
one of its PDUs first, or deadlocked with it."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from homeserver.storage.database import PostgresDatabase, open_database
from homeserver.storage.inbox import ADMIT_SQL_POSTGRES, InboxStore, PendingPdu
from homeserver.storage.migrations import migrate
from tests.conftest import create_pg_database, drop_pg_database

# EXECUTE takes values, not parameters.
VALUES = "'origin.test', 't1', '{}', 0, ARRAY['!r:o'], ARRAY['$e'], ARRAY['11'], ARRAY['{}'], '{}', 'outlier'"


async def _plan(conn: Any, *, seqscan: bool) -> str:
    await conn.execute(f"SET enable_seqscan = {'on' if seqscan else 'off'}")
    try:
        await conn.execute(f"PREPARE door AS {ADMIT_SQL_POSTGRES}")
        rows = await conn.fetch(f"EXPLAIN EXECUTE door({VALUES})")
        return "\n".join(r[0] for r in rows)
    finally:
        await conn.execute("DEALLOCATE door")
        await conn.execute("RESET enable_seqscan")


async def test_door_plan_uses_the_indexes_on_empty_tables(postgres_admin_dsn: str) -> None:
    dsn = await create_pg_database(postgres_admin_dsn)
    db = await open_database("postgres", dsn=dsn)
    try:
        await migrate(db)
        assert isinstance(db, PostgresDatabase) and db._prepared_pool is not None
        async with db._prepared_pool.acquire() as conn:
            assert await conn.fetchval("SHOW plan_cache_mode") == "force_generic_plan"
            assert await conn.fetchval("SHOW enable_seqscan") == "off"
            generic = await _plan(conn, seqscan=False)
            # The same plan with sequential scans allowed: on empty tables, it scans them.
            naive = await _plan(conn, seqscan=True)
        assert "Seq Scan on events" in naive, naive
        assert "Seq Scan" not in generic, generic
        assert "events_event_id_key" in generic and "inbox_event_id" in generic
        # And the door works through that pool.
        store = InboxStore(db)
        pdu = PendingPdu("!r:o", "$e", "11", {"type": "m.room.message"})
        admitted = await store.admit("origin.test", "t1", {"pdus": {}}, [pdu], [])
        assert admitted.enqueued == 1 and not admitted.repeated
        again = await store.admit("origin.test", "t1", {"pdus": {}}, [pdu], [])
        assert again.repeated and again.enqueued == 0
    finally:
        await db.close()
        await drop_pg_database(postgres_admin_dsn, dsn)


async def test_door_runs_again_when_a_concurrent_send_enqueues_the_same_pdu(postgres_admin_dsn: str) -> None:
    """The door's insert has no ON CONFLICT: a PDU another /send enqueues after our look-up
    fails our statement on the inbox's unique key; it runs again and finds the PDU queued.
    Made certain here with a real transaction holding the key, uncommitted, while the door
    runs (its insert waits for it, then fails once it commits)."""
    dsn = await create_pg_database(postgres_admin_dsn)
    try:
        db = await open_database("postgres", dsn=dsn)
        try:
            await migrate(db)
            store = InboxStore(db)
            other = await asyncpg.connect(dsn)
            try:
                tx = other.transaction()
                await tx.start()
                await other.execute(
                    "INSERT INTO inbox (origin, kind, room_id, event_id, room_version, body, received_ts)"
                    " VALUES ('other.test', 'pdu', '!r:o', '$shared', '11', '{}', 0)"
                )
                pdus = [PendingPdu("!r:o", "$shared", "11", {}), PendingPdu("!r:o", "$own", "11", {})]
                door = asyncio.create_task(store.admit("origin.test", "t1", {"pdus": {}}, pdus, []))
                await asyncio.sleep(0.3)
                assert not door.done()  # waiting on the other transaction's key
                await tx.commit()
                admitted = await asyncio.wait_for(door, 10)
            finally:
                await other.close()
            assert not admitted.repeated
            assert admitted.queued == {"$shared"}
            assert admitted.enqueued == 1
            rows = await db.fetchall("SELECT origin, event_id FROM inbox ORDER BY id")
            assert rows == [("other.test", "$shared"), ("origin.test", "$own")]
        finally:
            await db.close()
    finally:
        await drop_pg_database(postgres_admin_dsn, dsn)


async def test_door_runs_again_after_a_deadlock_with_a_send_of_the_same_pdus(postgres_admin_dsn: str) -> None:
    """Two /sends carrying the same PDUs in different orders can deadlock on the inbox's
    unique key; PostgreSQL aborts one, and the door's statement runs again. Made certain
    here: another transaction holds $a, the door inserts $b then waits for $a, the other
    inserts $b; the door's backend detects the deadlock first (the other waits 10 s before
    looking), its statement runs again, waits for the other, and then finds both queued."""
    dsn = await create_pg_database(postgres_admin_dsn)
    try:
        db = await open_database("postgres", dsn=dsn)
        try:
            await migrate(db)
            store = InboxStore(db)
            other = await asyncpg.connect(dsn)
            insert = (
                "INSERT INTO inbox (origin, kind, room_id, event_id, room_version, body, received_ts)"
                " VALUES ('other.test', 'pdu', '!r:o', $1, '11', '{}', 0)"
            )
            try:
                await other.execute("SET deadlock_timeout = '10s'")
                tx = other.transaction()
                await tx.start()
                await other.execute(insert, "$a")
                pdus = [PendingPdu("!r:o", "$b", "11", {}), PendingPdu("!r:o", "$a", "11", {})]
                door = asyncio.create_task(store.admit("origin.test", "t1", {"pdus": {}}, pdus, []))
                await asyncio.sleep(0.3)
                assert not door.done()  # $b inserted, waiting for $a
                await other.execute(insert, "$b")  # waits for the door until its deadlock aborts it
                await tx.commit()
                admitted = await asyncio.wait_for(door, 10)
            finally:
                await other.close()
            assert not admitted.repeated
            assert admitted.queued == {"$a", "$b"}
            assert admitted.enqueued == 0
            rows = await db.fetchall("SELECT origin, event_id FROM inbox ORDER BY id")
            assert rows == [("other.test", "$a"), ("other.test", "$b")]
        finally:
            await db.close()
    finally:
        await drop_pg_database(postgres_admin_dsn, dsn)
