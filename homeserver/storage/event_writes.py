"""The persister's statements (rooms/persist.py): events with their edges, auth edges and
redaction rows, stream orderings, forward extremities and current state, and the few
look-ups persisting needs. The persister decides what to write; this store says how.

PostgreSQL writes an event that changes no state in ONE statement (``one_statement``);
the store decides once, at construction, whether its engine has that statement.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from homeserver.events.event import Event, StateKey
from homeserver.storage.database import Connection, Database, Statement
from homeserver.storage.events import CHUNK, Outcome, event_json
from homeserver.storage.relations import PG_INDEX_CTES, EventIndex
from homeserver.util.clock import SYSTEM_CLOCK, Clock
from homeserver.util.iters import batch_iter

# The ``events`` columns the persister writes (without the stream ordering).
_EVENT_COLUMNS = (
    "event_id, room_id, type, state_key, sender, membership, depth, origin_server_ts,"
    " outcome, rejection_reason, state_group, state_group_after, received_ts, json"
)
_EVENT_MARKS = "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?"  # one per column above
_INSERT_EVENT = f"INSERT INTO events (stream_ordering, {_EVENT_COLUMNS}) VALUES (?, {_EVENT_MARKS})"

# PostgreSQL: the event, its edges and the moved forward extremities in one statement
# (data-modifying CTEs). Every event gives the same text, so a group of them is one
# pipelined ``executemany``.
_PG_ONE_STATEMENT = (
    f"WITH ev AS ({_INSERT_EVENT}),"
    " ed AS (INSERT INTO event_edges (event_id, prev_event_id) SELECT ?::text, unnest(?::text[])"
    " ON CONFLICT DO NOTHING),"
    " au AS (INSERT INTO event_auth (event_id, auth_event_id) SELECT ?::text, unnest(?::text[])"
    " ON CONFLICT DO NOTHING),"
    # Not "event_id = ANY(?)": its generic plan scans every index entry of the room,
    # dead ones included (each event deletes one), so each delete grew slower.
    " fd AS (DELETE FROM forward_extremities WHERE (room_id, event_id) IN"
    " (SELECT ?::text, unnest(?::text[]))),"
    " fi AS (INSERT INTO forward_extremities (room_id, event_id) SELECT ?::text, unnest(?::text[])"
    " ON CONFLICT DO NOTHING),"
    # Its relation and search rows (storage/relations.py), when it is accepted.
    f"{PG_INDEX_CTES}"
    " done AS (SELECT 1)"
    " SELECT 1"
)

_DELETE_CURRENT_STATE = "DELETE FROM current_state WHERE room_id = ? AND type = ? AND state_key = ?"


class ReadInDeferredWrite(Exception):
    """A deferred write tried to read (it only collects statements)."""


class CollectedWrites(Connection):
    """A pseudo-connection that collects writes, and their callbacks, for one deferred
    group commit (``Database.defer``); reads are not allowed there."""

    def __init__(self) -> None:
        self.statements: list[Statement] = []

    async def write(self, sql: str, *args: Any) -> None:
        self.statements.append((sql, args, False))

    async def write_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self.statements.append((sql, [tuple(r) for r in rows], True))

    async def execute(self, sql: str, *args: Any) -> int:
        raise ReadInDeferredWrite("a deferred write cannot read")

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self.write_many(sql, rows)

    async def fetchall(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        raise ReadInDeferredWrite("a deferred write cannot read")

    async def executescript(self, script: str) -> None:
        raise ReadInDeferredWrite("a deferred write cannot run scripts")

    def defer(self, db: Database) -> asyncio.Future[None]:
        """Hand the collected statements to the next group commit, with the callbacks
        registered here (``call_after`` runs once they are committed, ``call_on_exception``
        if they fail)."""
        after, on_exception = self.take_callbacks()
        return db.defer(self.statements, after=after, on_exception=on_exception)


class EventWriteStore:
    def __init__(self, db: Database, clock: Clock = SYSTEM_CLOCK) -> None:
        self.db = db
        self._clock = clock
        self._one_statement: str | None = _PG_ONE_STATEMENT if db.dialect.name == "postgres" else None
        # The index rows (relations, search) of accepted events.
        self.index = EventIndex(db)
        # The last stream ordering handed out (None: read it from the database first).
        self._next_ordering: int | None = None

    # ------------------------------------------------------------------ orderings

    @property
    def ordering_known(self) -> bool:
        """Whether the next stream ordering is known without a read."""
        return self._next_ordering is not None

    def forget_ordering(self) -> None:
        """A write failed: the next ordering is read from the database again."""
        self._next_ordering = None

    async def allocate_ordering(self, conn: Connection) -> int:
        """The next stream ordering. One writer (every insert holds the persister's commit
        lock or runs without suspending): the ordering is allocated here, so the insert
        need not be a round trip of its own, and a deferred write knows its ordering
        before it is committed."""
        if self._next_ordering is None:
            self._next_ordering = int(await conn.fetchval("SELECT COALESCE(MAX(stream_ordering), 0) FROM events"))
        self._next_ordering += 1
        return self._next_ordering

    # ------------------------------------------------------------------ look-ups

    async def ordering_and_outcome(self, event_id: str) -> tuple[int, Outcome] | None:
        row = await self.db.fetchone("SELECT stream_ordering, outcome FROM events WHERE event_id = ?", event_id)
        return None if row is None else (int(row[0]), Outcome(row[1]))

    async def ordering_of(self, event_id: str) -> int | None:
        value = await self.db.fetchval("SELECT stream_ordering FROM events WHERE event_id = ?", event_id)
        return None if value is None else int(value)

    async def has_accepted_child(self, event_id: str, *, settled: bool = True) -> bool:
        """Whether an accepted event names ``event_id`` among its prev events.
        ``settled=False``: without waiting for deferred writes (their events are not seen)."""
        fetch = self.db.fetchall if settled else self.db.fetchall_independent
        rows = await fetch(
            "SELECT 1 FROM event_edges ed JOIN events e ON e.event_id = ed.event_id"
            " WHERE ed.prev_event_id = ? AND e.outcome = 'accepted' LIMIT 1",
            event_id,
        )
        return bool(rows)

    async def outcomes_in(self, conn: Connection, event_ids: Sequence[str]) -> dict[str, str]:
        """The stored outcome (its text) of each of ``event_ids`` held, read in ``conn``."""
        held: dict[str, str] = {}
        for chunk in batch_iter(event_ids, CHUNK):
            cond, args = self.db.dialect.in_list("event_id", chunk)
            rows = await conn.fetchall(f"SELECT event_id, outcome FROM events WHERE {cond}", *args)
            held.update((r[0], r[1]) for r in rows)
        return held

    async def lowest_ordering(self, conn: Connection) -> int | None:
        low = await conn.fetchval("SELECT MIN(stream_ordering) FROM events")
        return None if low is None else int(low)

    async def state_group_after(self, conn: Connection, event_id: str) -> int | None:
        value = await conn.fetchval("SELECT state_group_after FROM events WHERE event_id = ?", event_id)
        return None if value is None else int(value)

    # ------------------------------------------------------------------ events

    async def delete_event(self, conn: Connection, event_id: str) -> None:
        """Remove an outlier's rows before it is stored again as a full event."""
        await conn.write("DELETE FROM events WHERE event_id = ?", event_id)
        await conn.write("DELETE FROM event_edges WHERE event_id = ?", event_id)
        await conn.write("DELETE FROM event_auth WHERE event_id = ?", event_id)

    async def insert_event(
        self,
        conn: Connection,
        event: Event,
        outcome: Outcome,
        rejection_reason: str | None,
        before_group: int | None,
        after_group: int | None,
        new_room: bool = True,
        *,
        if_absent: bool = False,
        ordering: int | None = None,
    ) -> int:
        """Write the event (with its room's row when ``new_room``), its edges, auth edges
        and redaction row; return its stream ordering (``ordering``: given by the caller,
        as for backfilled history below every ordering handed out)."""
        if new_room:
            await conn.write(
                "INSERT INTO rooms (room_id, room_version, created_ts) VALUES (?, ?, ?)"
                " ON CONFLICT (room_id) DO NOTHING",
                event.room_id,
                event.room_version.identifier,
                self._clock.time_ms(),
            )
        values = self._event_values(event, outcome, rejection_reason, before_group, after_group)
        conflict = " ON CONFLICT (event_id) DO NOTHING" if if_absent else ""
        if ordering is None:
            ordering = await self.allocate_ordering(conn)
        await conn.write(_INSERT_EVENT + conflict, ordering, *values)
        if event.prev_events:
            await conn.write_many(
                "INSERT INTO event_edges (event_id, prev_event_id) VALUES (?, ?)"
                " ON CONFLICT DO NOTHING",
                [(event.event_id, p) for p in dict.fromkeys(event.prev_events)],
            )
        if event.auth_events:
            await conn.write_many(
                "INSERT INTO event_auth (event_id, auth_event_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
                [(event.event_id, a) for a in dict.fromkeys(event.auth_events)],
            )
        if (
            event.type == "m.room.redaction" and event.state_key is None and event.redacts is not None
            and outcome in (Outcome.ACCEPTED, Outcome.OUTLIER)
        ):
            # Found by its target when that is served (rooms/redactions.py). A rejected or
            # soft-failed redaction, or one naming an event of another room, never applies:
            # no row.
            await conn.write(
                "INSERT INTO redactions (event_id, redacts) SELECT CAST(? AS TEXT), CAST(? AS TEXT)"
                " WHERE NOT EXISTS (SELECT 1 FROM events WHERE event_id = ? AND room_id <> ?)"
                " ON CONFLICT DO NOTHING",
                event.event_id, event.redacts, event.redacts, event.room_id,
            )
        if outcome is Outcome.ACCEPTED:
            await self.index.write(conn, event, ordering)
        return int(ordering)

    def _event_values(
        self, event: Event, outcome: Outcome, rejection_reason: str | None, before_group: int | None,
        after_group: int | None,
    ) -> tuple[Any, ...]:
        """The values of ``_EVENT_COLUMNS``."""
        return (
            event.event_id,
            event.room_id,
            event.type,
            event.state_key,
            event.sender,
            event.membership if event.type == "m.room.member" else None,
            event.depth,
            event.origin_server_ts,
            outcome.value,
            rejection_reason,
            before_group,
            after_group,
            self._clock.time_ms(),
            event_json(event),
        )

    # ------------------------------------------------------------------ one statement

    def writes_in_one_statement(self, event: Event) -> bool:
        """Whether ``one_statement`` can write ``event`` (PostgreSQL; it leaves out a
        redaction's row, so a redaction goes through ``insert_event``)."""
        return self._one_statement is not None and event.type != "m.room.redaction"

    def one_statement(
        self, event: Event, outcome: Outcome, rejection_reason: str | None, group: int,
        removed: Sequence[str], added: Sequence[str], ordering: int,
    ) -> Statement:
        """The event (sharing state group ``group`` with its prev), its edges and the moved
        forward extremities (``removed``, ``added``) in one statement: one round trip
        instead of about seven."""
        assert self._one_statement is not None
        values = self._event_values(event, outcome, rejection_reason, group, group)
        args = (
            ordering, *values,
            event.event_id, list(dict.fromkeys(event.prev_events)),
            event.event_id, list(dict.fromkeys(event.auth_events)),
            event.room_id, list(removed), event.room_id, list(added),
            *self.index.one_statement_args(event, ordering, outcome is Outcome.ACCEPTED),
        )
        return self._one_statement, args, False

    async def run(self, statement: Statement) -> None:
        """Run one statement on its own (a single statement is its own transaction)."""
        sql, args, _ = statement
        await self.db.execute(sql, *args)

    # ------------------------------------------------------------------ heads

    async def move_forward_extremities(
        self, conn: Connection, room_id: str, removed: Sequence[str], added: Sequence[str]
    ) -> None:
        if removed:
            await conn.write_many(
                "DELETE FROM forward_extremities WHERE room_id = ? AND event_id = ?",
                [(room_id, e) for e in removed],
            )
        if added:
            await conn.write_many(
                "INSERT INTO forward_extremities (room_id, event_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
                [(room_id, e) for e in added],
            )

    async def write_current_state(
        self,
        conn: Connection,
        room_id: str,
        old: Mapping[StateKey, str],
        new_state: Mapping[StateKey, str],
        known: Mapping[str, str | None],
        partial: bool = False,
    ) -> None:
        """Write the difference between ``old`` and ``new_state`` (or, with ``partial``,
        the entries of ``new_state`` only). ``known``: memberships of member events
        already at hand (the others are read)."""
        removed = [] if partial else [k for k in old if k not in new_state]
        changed = [(k, eid) for k, eid in new_state.items() if old.get(k) != eid]
        for t, sk in removed:
            await conn.write(_DELETE_CURRENT_STATE, room_id, t, sk)
        if not changed:
            return
        memberships: dict[str, str | None] = dict(known)
        member_ids = [eid for (t, _), eid in changed if t == "m.room.member" and eid not in memberships]
        memberships.update(await self._memberships_in(conn, member_ids))
        for (t, sk), _ in changed:
            if (t, sk) in old:
                await conn.write(_DELETE_CURRENT_STATE, room_id, t, sk)
        await conn.write_many(
            "INSERT INTO current_state (room_id, type, state_key, event_id, membership) VALUES (?, ?, ?, ?, ?)",
            [(room_id, t, sk, eid, memberships.get(eid)) for (t, sk), eid in changed],
        )

    async def _memberships_in(self, conn: Connection, event_ids: Iterable[str]) -> dict[str, str | None]:
        out: dict[str, str | None] = {}
        for chunk in batch_iter(event_ids, CHUNK):
            cond, args = self.db.dialect.in_list("event_id", chunk)
            rows = await conn.fetchall(f"SELECT event_id, membership FROM events WHERE {cond}", *args)
            out.update((r[0], r[1]) for r in rows)
        return out
