"""Bundling reads, for each page of events, which relation types each event has. It read
every relation of the page's events, reactions included (not bundled): an event with
100,000 reactions cost every page that showed it a scan of them all. Both engines."""

from __future__ import annotations

import time

from homeserver.storage.database import Database
from homeserver.storage.migrations import migrate
from homeserver.storage.relations import RelationStore

INSERT = ("INSERT INTO event_relations (event_id, room_id, parent_id, rel_type, event_type, sender,"
          " stream_ordering) VALUES (?, ?, ?, ?, ?, ?, ?)")


async def test_reactions_are_not_scanned(db: Database) -> None:
    await migrate(db)
    rows = [(f"$r{i}", "!r:x", "$popular", "m.annotation", "m.reaction", f"@u{i}:x", i + 10) for i in range(50_000)]
    rows.append(("$thread", "!r:x", "$popular", "m.thread", "m.room.message", "@a:x", 100_000))
    async with db.transaction() as conn:
        await conn.executemany(INSERT, rows)
    store = RelationStore(db)
    await store.related_kinds(["$popular"])  # warm
    started = time.monotonic()
    for _ in range(10):
        assert await store.related_kinds(["$popular", "$other"]) == {"$popular": {"m.thread"}}
    per_page = (time.monotonic() - started) / 10
    assert per_page < 0.005, per_page
    assert await store.related_kinds(["$popular"], ["m.annotation"]) == {"$popular": {"m.annotation"}}
