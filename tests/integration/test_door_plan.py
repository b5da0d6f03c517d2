"""PostgreSQL: the /send door's statement runs on connections of its own that plan it once
(a generic plan), and that plan takes the unique indexes even when it is made on empty
tables, as a new server's are: it must never scan the events table or the inbox."""

from __future__ import annotations

from typing import Any

from homeserver.federation.inbox import _ADMIT_SQL, InboxStore, PendingPdu
from homeserver.storage.database import PostgresDatabase, open_database
from homeserver.storage.migrations import migrate
from tests.conftest import create_pg_database, drop_pg_database

# EXECUTE takes values, not parameters.
VALUES = "'origin.test', 't1', '{}', 0, ARRAY['!r:o'], ARRAY['$e'], ARRAY['11'], ARRAY['{}'], '{}', 'outlier'"


async def _plan(conn: Any, *, seqscan: bool) -> str:
    await conn.execute(f"SET enable_seqscan = {'on' if seqscan else 'off'}")
    try:
        await conn.execute(f"PREPARE door AS {_ADMIT_SQL}")
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
        assert isinstance(db, PostgresDatabase) and db._door_pool is not None
        async with db._door_pool.acquire() as conn:
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
