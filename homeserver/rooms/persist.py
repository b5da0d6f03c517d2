"""Persisting events: the one place that writes events, state snapshots, forward
extremities and current state, in one database transaction per event.

Outcomes decide what an event may touch: an accepted event moves the room's forward
extremities and current state; soft-failed and rejected events are stored with their
state but never become part of the current state; outliers (auth chains and state
fetched from other servers) are stored with no state at all; backfilled history is stored
with its state but below everything else in stream order, touching neither extremities
nor current state (``persist_historical``). Persisting the same event twice has one
effect. Callers serialise work per room with ``room_lock``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from homeserver.events.errors import StateResolutionError
from homeserver.events.event import Event, StateKey
from homeserver.events.stateres import resolve_state
from homeserver.events.versions import RoomVersion
from homeserver.storage.database import Connection, Statement, is_unique_violation
from homeserver.storage.events import EventStore, Outcome, event_json

log = logging.getLogger(__name__)

InTransaction = Callable[[Connection], Awaitable[None]]
# Called after an event's transaction commits (event, outcome, stream ordering): wakes
# /sync long-polls and similar. Listeners must be quick and must not raise.
PersistListener = Callable[[Event, "Outcome", int], None]


HEAD_CACHE_ROOMS = 1_000
GROUP_CACHE_EVENTS = 50_000


@dataclass(frozen=True, slots=True)
class _Head:
    """A room's forward extremities and current state, as committed."""

    extremities: frozenset[str]
    state: dict[StateKey, str]
    # When known: the only entries that differ from the previous head's state.
    delta: tuple[tuple[StateKey, str], ...] | None = None


_UNCHECKED = object()


@dataclass(frozen=True, slots=True)
class Historical:
    """A backfilled event to store: its outcome (accepted or rejected) and the state before it."""

    event: Event
    outcome: Outcome
    state_before: Mapping[StateKey, str]
    rejection_reason: str | None = None


class PersistError(Exception):
    """The event cannot be persisted as asked (for example, a prev event has no state)."""


class _Collect(Connection):
    """Collects writes for a deferred group (see EventPersister's fast path); reads are
    not allowed there."""

    def __init__(self) -> None:
        self.statements: list[Statement] = []

    async def write(self, sql: str, *args: Any) -> None:
        self.statements.append((sql, args, False))

    async def write_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self.statements.append((sql, [tuple(r) for r in rows], True))

    async def execute(self, sql: str, *args: Any) -> int:
        raise PersistError("a deferred write cannot read")

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self.write_many(sql, rows)

    async def fetchall(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        raise PersistError("a deferred write cannot read")

    async def executescript(self, script: str) -> None:
        raise PersistError("a deferred write cannot run scripts")


class EventPersister:
    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.db = store.db
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self.listeners: list[PersistListener] = []
        # Only this class writes heads and state groups, under the room lock, and caches
        # are updated after commit: in one process they are authoritative.
        self._heads: OrderedDict[str, _Head] = OrderedDict()
        self._group_after: OrderedDict[str, int] = OrderedDict()
        self._next_ordering: int | None = None
        # Commits happen in stream order, so a reader that has seen ordering N has seen
        # everything below it (PostgreSQL would otherwise commit concurrent rooms out of order).
        self._commit_lock = asyncio.Lock()
        # Bumped when deferred writes failed and the caches above were dropped: work
        # computed from the caches before that must not be deferred.
        self.generation = 0
        self.db.on_deferred_failure(self._forget_all)

    def _forget_all(self) -> None:
        self._heads.clear()
        self._group_after.clear()
        self._next_ordering = None
        self.generation += 1

    def room_lock(self, room_id: str) -> asyncio.Lock:
        """The lock that serialises persisting and creating events in one room."""
        lock = self._locks.get(room_id)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[room_id] = lock
        return lock

    # ------------------------------------------------------------------ state

    async def compute_state_before(
        self, room_version: RoomVersion, prev_event_ids: Sequence[str]
    ) -> dict[StateKey, str]:
        """The state before an event: the resolution of the states after its prev events."""
        states: list[dict[StateKey, str]] = []
        for prev in dict.fromkeys(prev_event_ids):
            after = await self.store.get_state_ids_after(prev)
            if after is None:
                raise PersistError(f"prev event {prev} has no known state")
            states.append(after)
        return await self.resolve(room_version, states)

    async def resolve(
        self,
        room_version: RoomVersion,
        states: Sequence[Mapping[StateKey, str]],
        unstored: Mapping[str, Event] | None = None,
    ) -> dict[StateKey, str]:
        """State resolution over stored events (plus ``unstored`` ones being persisted),
        loading what it needs first."""
        if not states:
            return {}
        first = states[0]
        if all(s == first for s in states[1:]):
            return dict(first)
        # Load the conflicted events and their auth chains: resolution is pure and sync.
        keys = set().union(*states)
        conflicted = {s[k] for s in states for k in keys if k in s and any(o.get(k) != s[k] for o in states)}
        needed = set(conflicted)
        for s in states:
            needed.update(s.values())
        extra = dict(unstored or {})
        needed -= extra.keys()
        for ev in extra.values():
            needed.update(ev.auth_events)
        needed |= await self.store.get_auth_chain_ids(needed)
        stored = await self.store.get_events(needed)
        events = {eid: se.event for eid, se in stored.items()}
        events.update(extra)
        try:
            return resolve_state(room_version, states, events)
        except StateResolutionError as e:
            raise PersistError(f"state resolution failed: {e}") from None

    # ------------------------------------------------------------------ writes

    async def persist_outliers(self, events: Sequence[Event]) -> None:
        """Store events without state (auth chains, state fetched from others)."""
        if not events:
            return
        have = await self.store.have_events(e.event_id for e in events)
        try:
            async with self._commit_lock, self.db.transaction() as conn:
                for event in events:
                    if event.event_id in have:
                        continue
                    # The event may have been stored since the look-up above (the worker
                    # and a join can fetch the same auth chain): then this is a no-op.
                    await self._insert(conn, event, Outcome.OUTLIER, None, None, None, if_absent=True)
                    have.add(event.event_id)
        except BaseException:
            self._next_ordering = None
            raise

    async def persist_historical(self, items: Sequence[Historical]) -> dict[str, int]:
        """Store backfilled events (history from before we joined): ``items`` in
        topological order, oldest first, each with its outcome and the state before it.

        They get stream orderings below every ordering in the database (negative and
        decreasing, the newest of the batch highest), so /messages pages back into them;
        they never touch the forward extremities or the current state, and listeners
        (/sync wake-ups) are not told: they are not new. Events already stored with state
        are skipped (an outlier is taken in); returns the orderings of those stored now.
        The caller holds the room lock.
        """
        if not items:
            return {}
        room_id = items[0].event.room_id
        new_groups: list[int] = []
        stored: dict[str, int] = {}
        after_groups: dict[str, int] = {}
        new_room = await self.store.get_room_version(room_id) is None
        try:
            async with self._commit_lock, self.db.transaction() as conn:
                ids = [i.event.event_id for i in items]
                held: dict[str, str] = {}
                for start in range(0, len(ids), 500):
                    chunk = ids[start : start + 500]
                    rows = await conn.fetchall(
                        f"SELECT event_id, outcome FROM events WHERE event_id IN ({','.join('?' * len(chunk))})",
                        *chunk,
                    )
                    held.update((r[0], r[1]) for r in rows)
                todo = [i for i in items if held.get(i.event.event_id, Outcome.OUTLIER.value) == Outcome.OUTLIER.value]
                if not todo:
                    return {}
                low = await conn.fetchval("SELECT MIN(stream_ordering) FROM events")
                base = min(int(low) if low is not None else 0, 0) - len(todo)
                for index, item in enumerate(todo):
                    event = item.event
                    parent: int | None = None
                    for prev in event.prev_events:
                        parent = after_groups.get(prev) or self._group_after.get(prev)
                        if parent is None:
                            value = await conn.fetchval(
                                "SELECT state_group_after FROM events WHERE event_id = ?", prev
                            )
                            parent = int(value) if value is not None else None
                        if parent is not None:
                            break
                    state_after = dict(item.state_before)
                    if event.is_state and item.outcome is not Outcome.REJECTED:
                        state_after[event.state_tuple] = event.event_id
                    before_group = await self._group_for(conn, room_id, item.state_before, parent, new_groups)
                    if state_after == item.state_before:
                        after_group = before_group
                    else:
                        after_group = await self.store.store_state_group(conn, room_id, state_after, before_group)
                        new_groups.append(after_group)
                    if event.event_id in held:  # an outlier, taken into the timeline
                        await conn.write("DELETE FROM events WHERE event_id = ?", event.event_id)
                        await conn.write("DELETE FROM event_edges WHERE event_id = ?", event.event_id)
                        await conn.write("DELETE FROM event_auth WHERE event_id = ?", event.event_id)
                    stored[event.event_id] = await self._insert(
                        conn, event, item.outcome, item.rejection_reason, before_group, after_group,
                        new_room, ordering=base + index,
                    )
                    new_room = False
                    after_groups[event.event_id] = after_group
        except BaseException:
            for g in new_groups:
                self.store.forget_cached_group(g)
            raise
        for event_id, group in after_groups.items():
            self._remember_group(event_id, group)
        return stored

    async def persist_event(
        self,
        event: Event,
        outcome: Outcome,
        state_before: Mapping[StateKey, str] | None,
        *,
        rejection_reason: str | None = None,
        in_transaction: InTransaction | None = None,
        stored_outcome: Outcome | object | None = _UNCHECKED,
    ) -> int:
        """Store ``event`` with its outcome and the state before it; return its stream ordering.

        Idempotent: an event already stored with state keeps its first outcome; an outlier
        is upgraded to a full event. A caller that has just looked the event up passes what
        it found as ``stored_outcome`` (None: not stored) to save the look-up here.
        """
        ordering, commit = await self.persist_event_deferred(
            event, outcome, state_before, rejection_reason=rejection_reason, in_transaction=in_transaction,
            stored_outcome=stored_outcome, defer=False,
        )
        assert commit is None
        return ordering

    async def persist_event_deferred(
        self,
        event: Event,
        outcome: Outcome,
        state_before: Mapping[StateKey, str] | None,
        *,
        rejection_reason: str | None = None,
        in_transaction: InTransaction | None = None,
        stored_outcome: Outcome | object | None = _UNCHECKED,
        defer: bool = True,
        generation: int | None = None,
    ) -> tuple[int, asyncio.Future[None] | None]:
        """``persist_event`` that may return before the commit: with ``defer`` and when the
        event changes no state and everything it needs is cached, its writes join the
        database's next group commit and the returned future resolves once they are
        committed (None: committed already). The caches (and so the next event of the
        room) see the event at once. ``generation``: the persister's ``generation`` when the
        caller read what it decided from; if it changed since, nothing is deferred.
        """
        if outcome is Outcome.OUTLIER:
            await self.persist_outliers([event])
            row = await self.db.fetchval(
                "SELECT stream_ordering FROM events WHERE event_id = ?", event.event_id
            )
            return int(row), None
        if state_before is None:
            raise PersistError("an event with an outcome needs its state before")
        if generation is not None and generation != self.generation:
            defer = False
        try:
            return await self._persist_event(
                event, outcome, state_before, rejection_reason, in_transaction, stored_outcome, defer
            )
        except Exception as e:
            if stored_outcome is _UNCHECKED or not is_unique_violation(e):
                raise
            # The caller's look-up was stale (the event was stored since): check here.
            return await self._persist_event(
                event, outcome, state_before, rejection_reason, in_transaction, _UNCHECKED, False
            )

    async def _persist_event(
        self,
        event: Event,
        outcome: Outcome,
        state_before: Mapping[StateKey, str],
        rejection_reason: str | None,
        in_transaction: InTransaction | None,
        stored_outcome: Outcome | object | None,
        defer: bool,
    ) -> tuple[int, asyncio.Future[None] | None]:
        existing: bool
        generation = self.generation
        if stored_outcome is _UNCHECKED:
            row = await self.db.fetchone(
                "SELECT stream_ordering, outcome FROM events WHERE event_id = ?", event.event_id
            )
            if row is not None and row[1] != Outcome.OUTLIER.value:
                return int(row[0]), None
            existing = row is not None
        elif stored_outcome is None:
            existing = False
        elif stored_outcome is Outcome.OUTLIER:
            existing = True
        else:
            row = await self.db.fetchone(
                "SELECT stream_ordering FROM events WHERE event_id = ?", event.event_id
            )
            return (int(row[0]) if row else 0), None

        state_after = dict(state_before)
        if event.is_state and outcome is not Outcome.REJECTED:
            state_after[event.state_tuple] = event.event_id

        parent = await self._parent_group(event)
        old_head: _Head | None = None
        new_head: _Head | None = None
        if outcome is Outcome.ACCEPTED:
            old_head = await self._load_head(event.room_id)
            new_head = await self._next_head(event, state_after, old_head)
        new_room = await self.store.get_room_version(event.room_id) is None
        # The fast paths: an event that changes no state, in a room we know, with the state
        # group it shares with its prev cached (a message in a busy room).
        if (
            parent is not None and not existing and not new_room and in_transaction is None
            and state_after == state_before and (new_head is None or new_head.delta == ())
            and self.store.cached_state_group(parent) == state_before
        ):
            # Not while a transaction holds the commit lock: it may take its ordering after
            # this event's and commit before it (on SQLite too: the deferred write waits for
            # that transaction), and a reader that saw its ordering would miss this event.
            if (defer and self.db.supports_defer and generation == self.generation
                    and self._next_ordering is not None and not self._commit_lock.locked()):
                return await self._persist_deferred(event, outcome, rejection_reason, parent, old_head, new_head)
            if self.db.engine == "postgres" and event.type != "m.room.redaction":
                # (The one statement leaves out a redaction's row, written by ``_insert``.)
                return await self._persist_one_statement(event, outcome, rejection_reason, parent, old_head, new_head)
        new_groups: list[int] = []
        try:
            async with self._commit_lock, self.db.transaction() as conn:
                before_group = await self._group_for(conn, event.room_id, state_before, parent, new_groups)
                if state_after == state_before:
                    after_group = before_group
                else:
                    after_group = await self.store.store_state_group(
                        conn, event.room_id, state_after, before_group
                    )
                    new_groups.append(after_group)
                if existing:
                    await conn.write("DELETE FROM events WHERE event_id = ?", event.event_id)
                    await conn.write("DELETE FROM event_edges WHERE event_id = ?", event.event_id)
                    await conn.write("DELETE FROM event_auth WHERE event_id = ?", event.event_id)
                ordering = await self._insert(
                    conn, event, outcome, rejection_reason, before_group, after_group, new_room
                )
                if old_head is not None and new_head is not None:
                    await self._write_head(conn, event, old_head, new_head)
                if in_transaction is not None:
                    await in_transaction(conn)
        except BaseException:
            for g in new_groups:
                self.store.forget_cached_group(g)
            self._heads.pop(event.room_id, None)
            self._next_ordering = None
            raise
        self._remember_group(event.event_id, after_group)
        if new_head is not None:
            self._remember_head(event.room_id, new_head)
        self._notify(event, outcome, ordering)
        return ordering, None

    async def _persist_deferred(
        self, event: Event, outcome: Outcome, rejection_reason: str | None, group: int,
        old_head: _Head | None, new_head: _Head | None,
    ) -> tuple[int, asyncio.Future[None]]:
        """The fast path: an event that changes no state, with everything cached. Nothing
        here suspends (the collector's writes return at once and the ordering is known), so
        no other task can change the caches between the checks of the caller and the deferral."""
        collect = _Collect()
        if self.db.engine == "postgres" and event.type != "m.room.redaction":
            ordering = await self._allocate_ordering(collect)
            collect.statements.append(
                self._one_statement(event, outcome, rejection_reason, group, old_head, new_head, ordering)
            )
        else:
            ordering = await self._insert(collect, event, outcome, rejection_reason, group, group, False)
            if old_head is not None and new_head is not None:
                await self._write_head(collect, event, old_head, new_head)
        commit = self.db.defer(collect.statements)
        self._remember_group(event.event_id, group)
        if new_head is not None:
            self._remember_head(event.room_id, new_head)

        def committed(future: asyncio.Future[None]) -> None:
            if not future.cancelled() and future.exception() is None:
                self._notify(event, outcome, ordering)

        commit.add_done_callback(committed)
        return ordering, commit

    def _one_statement(
        self, event: Event, outcome: Outcome, rejection_reason: str | None, group: int,
        old_head: _Head | None, new_head: _Head | None, ordering: int,
    ) -> Statement:
        """PostgreSQL: the event, its edges and the moved forward extremities in ONE
        statement (data-modifying CTEs), one round trip instead of about seven. Every event
        gives the same text, so a group of them is one pipelined ``executemany``."""
        columns, values = self._event_row(event, outcome, rejection_reason, group, group)
        removed: list[str] = []
        added: list[str] = []
        if old_head is not None and new_head is not None:
            removed = sorted(old_head.extremities - new_head.extremities)
            added = sorted(new_head.extremities - old_head.extremities)
        sql = (
            f"WITH ev AS (INSERT INTO events (stream_ordering, {columns})"
            f" VALUES (?, {', '.join('?' * len(values))})),"
            " ed AS (INSERT INTO event_edges (event_id, prev_event_id) SELECT ?::text, unnest(?::text[])"
            " ON CONFLICT DO NOTHING),"
            " au AS (INSERT INTO event_auth (event_id, auth_event_id) SELECT ?::text, unnest(?::text[])"
            " ON CONFLICT DO NOTHING),"
            # Not "event_id = ANY(?)": its generic plan scans every index entry of the room,
            # dead ones included (each event deletes one), so each delete grew slower.
            " fd AS (DELETE FROM forward_extremities WHERE (room_id, event_id) IN"
            " (SELECT ?::text, unnest(?::text[]))),"
            " fi AS (INSERT INTO forward_extremities (room_id, event_id) SELECT ?::text, unnest(?::text[])"
            " ON CONFLICT DO NOTHING)"
            " SELECT 1"
        )
        args = (
            ordering, *values,
            event.event_id, list(dict.fromkeys(event.prev_events)),
            event.event_id, list(dict.fromkeys(event.auth_events)),
            event.room_id, removed, event.room_id, added,
        )
        return sql, args, False

    async def _persist_one_statement(
        self, event: Event, outcome: Outcome, rejection_reason: str | None, group: int,
        old_head: _Head | None, new_head: _Head | None,
    ) -> tuple[int, None]:
        """PostgreSQL's fast path when the write cannot be deferred: the same one statement
        (a single statement is its own transaction), committed before returning."""
        try:
            async with self._commit_lock:
                ordering = await self._allocate_ordering(self.db)
                sql, args, _ = self._one_statement(
                    event, outcome, rejection_reason, group, old_head, new_head, ordering
                )
                await self.db.execute(sql, *args)
        except BaseException:
            self._heads.pop(event.room_id, None)
            self._next_ordering = None
            raise
        self._remember_group(event.event_id, group)
        if new_head is not None:
            self._remember_head(event.room_id, new_head)
        self._notify(event, outcome, ordering)
        return ordering, None

    def _notify(self, event: Event, outcome: Outcome, ordering: int) -> None:
        for listener in self.listeners:
            try:
                listener(event, outcome, ordering)
            except Exception:
                log.exception("persist listener failed", extra={"event_id": event.event_id})

    def _remember_head(self, room_id: str, head: _Head) -> None:
        self._heads[room_id] = head
        self._heads.move_to_end(room_id)
        while len(self._heads) > HEAD_CACHE_ROOMS:
            self._heads.popitem(last=False)

    def _remember_group(self, event_id: str, group: int) -> None:
        self._group_after[event_id] = group
        self._group_after.move_to_end(event_id)
        while len(self._group_after) > GROUP_CACHE_EVENTS:
            self._group_after.popitem(last=False)

    async def _parent_group(self, event: Event) -> int | None:
        for prev in event.prev_events:
            group = self._group_after.get(prev)
            if group is None:
                group = await self.store.get_state_group_after(prev)
            if group is not None:
                return group
        return None

    async def _group_for(
        self,
        conn: Connection,
        room_id: str,
        state: Mapping[StateKey, str],
        parent: int | None,
        new_groups: list[int],
    ) -> int:
        if parent is not None:
            parent_state = await self.store.load_state_group(parent, conn)
            if parent_state == state:
                return parent
        group = await self.store.store_state_group(conn, room_id, state, parent)
        new_groups.append(group)
        return group

    async def _insert(
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
        if new_room:
            await conn.write(
                "INSERT INTO rooms (room_id, room_version, created_ts) VALUES (?, ?, ?)"
                " ON CONFLICT (room_id) DO NOTHING",
                event.room_id,
                event.room_version.identifier,
                int(time.time() * 1000),
            )
        columns, values = self._event_row(event, outcome, rejection_reason, before_group, after_group)
        conflict = " ON CONFLICT (event_id) DO NOTHING" if if_absent else ""
        if ordering is not None:
            # Given by the caller (backfilled history, below every ordering handed out).
            await conn.write(
                f"INSERT INTO events (stream_ordering, {columns}) VALUES (?, {', '.join('?' * len(values))})"
                + conflict,
                ordering,
                *values,
            )
        else:
            # One writer (every insert holds the commit lock or runs without suspending):
            # the ordering is allocated here, so the insert need not be a round trip of its
            # own, and a deferred write knows its ordering before it is committed.
            ordering = await self._allocate_ordering(conn)
            await conn.write(
                f"INSERT INTO events (stream_ordering, {columns}) VALUES (?, {', '.join('?' * len(values))})"
                + conflict,
                ordering,
                *values,
            )
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
        if event.type == "m.room.redaction" and event.state_key is None and event.redacts is not None:
            # Found by its target when that is served (rooms/redactions.py).
            await conn.write(
                "INSERT INTO redactions (event_id, redacts) VALUES (?, ?) ON CONFLICT DO NOTHING",
                event.event_id, event.redacts,
            )
        return int(ordering)

    async def _allocate_ordering(self, conn: Connection) -> int:
        if self._next_ordering is None:
            self._next_ordering = int(await conn.fetchval("SELECT COALESCE(MAX(stream_ordering), 0) FROM events"))
        self._next_ordering += 1
        return self._next_ordering

    @staticmethod
    def _event_row(
        event: Event, outcome: Outcome, rejection_reason: str | None, before_group: int | None,
        after_group: int | None,
    ) -> tuple[str, tuple[Any, ...]]:
        """The ``events`` columns (without the stream ordering) and their values."""
        columns = (
            "event_id, room_id, type, state_key, sender, membership, depth, origin_server_ts,"
            " outcome, rejection_reason, state_group, state_group_after, received_ts, json"
        )
        values = (
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
            int(time.time() * 1000),
            event_json(event),
        )
        return columns, values

    async def forward_extremities(self, room_id: str) -> frozenset[str]:
        """The room's forward extremities (from the cache when warm)."""
        return (await self._load_head(room_id)).extremities

    async def current_state_id(self, room_id: str, key: StateKey) -> str | None:
        """The event ID at ``key`` in the room's current state: from the cache when warm,
        else one look-up (the room's whole state is not loaded for it). The look-up does not
        wait for deferred writes (the /send door asks): they never change current state."""
        cached = self._heads.get(room_id)
        if cached is not None:
            return cached.state.get(key)
        rows = await self.db.fetchall_independent(
            "SELECT event_id FROM current_state WHERE room_id = ? AND type = ? AND state_key = ?",
            room_id, key[0], key[1],
        )
        return rows[0][0] if rows and isinstance(rows[0][0], str) else None

    async def _load_head(self, room_id: str) -> _Head:
        cached = self._heads.get(room_id)
        if cached is not None:
            return cached
        extremities = frozenset(await self.store.get_forward_extremities(room_id))
        return _Head(extremities, await self.store.get_current_state_ids(room_id))

    async def _next_head(self, event: Event, state_after: dict[StateKey, str], old: _Head) -> _Head:
        """The forward extremities and current state once ``event`` is accepted.

        Computed before the write transaction (the caller holds the room lock), because
        state resolution may need to load many events.
        """
        prevs = set(event.prev_events)
        later = False
        if not prevs <= old.extremities:
            # Out of order: an accepted event may already point at this one, in which
            # case it is not an extremity.
            later = bool(
                await self.db.fetchval(
                    "SELECT 1 FROM event_edges ed JOIN events e ON e.event_id = ed.event_id"
                    " WHERE ed.prev_event_id = ? AND e.outcome = 'accepted' LIMIT 1",
                    event.event_id,
                )
            )
        extremities = set(old.extremities) - prevs
        if not later:
            extremities.add(event.event_id)
        if extremities == {event.event_id} and prevs == old.extremities and len(prevs) == 1:
            # The linear case: the state before the event is the current state.
            if not event.is_state:
                return _Head(frozenset(extremities), old.state, ())
            key = event.state_tuple
            if state_after.get(key) == old.state.get(key):
                return _Head(frozenset(extremities), old.state, ())
            return _Head(frozenset(extremities), {**old.state, key: event.event_id}, ((key, event.event_id),))
        if extremities == {event.event_id}:
            return _Head(frozenset(extremities), state_after)
        states = []
        for ext in sorted(extremities):
            if ext == event.event_id:
                states.append(state_after)
                continue
            after = await self.store.get_state_ids_after(ext)
            if after is not None:
                states.append(after)
        resolved = await self.resolve(event.room_version, states, {event.event_id: event})
        return _Head(frozenset(extremities), resolved)

    async def _write_head(self, conn: Connection, event: Event, old: _Head, new: _Head) -> None:
        room_id = event.room_id
        known = {event.event_id: event.membership} if event.type == "m.room.member" else {}
        removed = sorted(old.extremities - new.extremities)
        added = sorted(new.extremities - old.extremities)
        if removed:
            await conn.write(
                f"DELETE FROM forward_extremities WHERE room_id = ? AND event_id IN ({','.join('?' * len(removed))})",
                room_id,
                *removed,
            )
        if added:
            await conn.write_many(
                "INSERT INTO forward_extremities (room_id, event_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
                [(room_id, e) for e in added],
            )
        if new.delta is not None:
            if new.delta:
                await self._write_current_state(conn, room_id, old.state, dict(new.delta), known, partial=True)
        elif new.state is not old.state:
            await self._write_current_state(conn, room_id, old.state, new.state, known)

    async def _write_current_state(
        self,
        conn: Connection,
        room_id: str,
        old: Mapping[StateKey, str],
        new_state: Mapping[StateKey, str],
        known: Mapping[str, str | None],
        partial: bool = False,
    ) -> None:
        """Write the difference between ``old`` and ``new_state`` (or, with ``partial``,
        the entries of ``new_state`` only)."""
        removed = [] if partial else [k for k in old if k not in new_state]
        changed = [(k, eid) for k, eid in new_state.items() if old.get(k) != eid]
        for t, sk in removed:
            await conn.write(
                "DELETE FROM current_state WHERE room_id = ? AND type = ? AND state_key = ?", room_id, t, sk
            )
        if not changed:
            return
        memberships: dict[str, str | None] = dict(known)
        member_ids = [eid for (t, _), eid in changed if t == "m.room.member" and eid not in memberships]
        for i in range(0, len(member_ids), 500):
            chunk = member_ids[i : i + 500]
            got = await conn.fetchall(
                f"SELECT event_id, membership FROM events WHERE event_id IN ({','.join('?' * len(chunk))})",
                *chunk,
            )
            memberships.update((r[0], r[1]) for r in got)
        for (t, sk), _ in changed:
            if (t, sk) in old:
                await conn.write(
                    "DELETE FROM current_state WHERE room_id = ? AND type = ? AND state_key = ?",
                    room_id, t, sk,
                )
        await conn.write_many(
            "INSERT INTO current_state (room_id, type, state_key, event_id, membership) VALUES (?, ?, ?, ?, ?)",
            [(room_id, t, sk, eid, memberships.get(eid)) for (t, sk), eid in changed],
        )
