"""Migration 0017 indexes the events held before it, on SQLite and PostgreSQL: their
relations (accepted, non-state events with a rel_type and an event ID) and their
searchable text (message bodies, room names and topics)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from homeserver.storage.database import Database
from homeserver.storage.migrations import MIGRATIONS_DIR, migrate
from homeserver.storage.search import SearchQuery, SearchStore


async def test_migration_indexes_events_held_before_it(db: Database, tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    for entry in MIGRATIONS_DIR.iterdir():
        if entry.name.endswith(".sql") and int(entry.name[:4]) < 17:
            (old / entry.name).write_text(entry.read_text(encoding="utf-8"), encoding="utf-8")
    await migrate(db, old)
    await db.execute("INSERT INTO rooms (room_id, room_version, created_ts) VALUES ('!r:x', '10', 0)")
    thread = {"body": "in the thread", "m.relates_to": {"rel_type": "m.thread", "event_id": "$root"}}
    rows: list[tuple[str, str, str | None, str, dict[str, Any]]] = [
        ("$root", "m.room.message", None, "accepted", {"body": "the quick brown fox"}),
        ("$reply", "m.room.message", None, "accepted", thread),
        ("$soft", "m.room.message", None, "soft_failed", thread),
        ("$bad", "m.room.message", None, "accepted", {"m.relates_to": {"rel_type": "m.thread", "event_id": 3}}),
        ("$state", "m.room.topic", "", "accepted", {"topic": "foxes", "m.relates_to": thread["m.relates_to"]}),
        ("$name", "m.room.name", "", "accepted", {"name": "Fox den"}),
    ]
    for n, (event_id, event_type, state_key, outcome, content) in enumerate(rows, start=1):
        pdu = {"type": event_type, "content": content, **({} if state_key is None else {"state_key": state_key})}
        await db.execute(
            "INSERT INTO events (stream_ordering, event_id, room_id, type, state_key, sender, depth,"
            " origin_server_ts, outcome, received_ts, json) VALUES (?, ?, '!r:x', ?, ?, '@a:x', 1, 0, ?, 0, ?)",
            n, event_id, event_type, state_key, outcome, json.dumps(pdu),
        )
    assert 17 in await migrate(db)
    found = await db.fetchall("SELECT event_id, parent_id, rel_type FROM event_relations")
    assert [tuple(r) for r in found] == [("$reply", "$root", "m.thread")]
    search = SearchStore(db)
    keys = ["content.body", "content.name", "content.topic"]
    hits = await search.search(SearchQuery(["!r:x"], ["fox"], keys), limit=10, by_rank=False)
    assert sorted(h.event_id for h in hits) == ["$name", "$root", "$state"]  # a prefix: "foxes" too
    hits = await search.search(SearchQuery(["!r:x"], ["foxes"], keys), limit=10, by_rank=True)
    assert sorted(h.event_id for h in hits) == ["$state"]
    hits = await search.search(SearchQuery(["!r:x"], ["quick", "fox"], ["content.body"]), limit=10, by_rank=True)
    assert [h.event_id for h in hits] == ["$root"]
    found_keys = await db.fetchall("SELECT event_id, key FROM event_search ORDER BY event_id")
    assert [tuple(r) for r in found_keys] == [
        ("$name", "content.name"), ("$reply", "content.body"), ("$root", "content.body"), ("$state", "content.topic")]
