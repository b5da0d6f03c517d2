"""Persisting events: the one place that writes events, state snapshots, forward
extremities and current state, in one database transaction per event.

Outcomes decide what an event may touch: an accepted event moves the room's forward
extremities and current state; soft-failed and rejected events are stored with their
state but never become part of the current state; outliers (auth chains and state
fetched from other servers) are stored with no state at all. Persisting the same event
twice has one effect. Callers serialise work per room with ``room_lock``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence

from homeserver.events.errors import StateResolutionError
from homeserver.events.event import Event, StateKey
from homeserver.events.stateres import resolve_state
from homeserver.events.versions import RoomVersion
from homeserver.storage.database import Connection
from homeserver.storage.events import EventStore, Outcome, event_json

log = logging.getLogger(__name__)

InTransaction = Callable[[Connection], Awaitable[None]]


class PersistError(Exception):
    """The event cannot be persisted as asked (for example, a prev event has no state)."""


class EventPersister:
    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.db = store.db
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

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
        async with self.db.transaction() as conn:
            for event in events:
                if event.event_id in have:
                    continue
                await self._insert(conn, event, Outcome.OUTLIER, None, None, None)
                have.add(event.event_id)

    async def persist_event(
        self,
        event: Event,
        outcome: Outcome,
        state_before: Mapping[StateKey, str] | None,
        *,
        rejection_reason: str | None = None,
        in_transaction: InTransaction | None = None,
    ) -> int:
        """Store ``event`` with its outcome and the state before it; return its stream ordering.

        Idempotent: an event already stored with state keeps its first outcome; an outlier
        is upgraded to a full event.
        """
        if outcome is Outcome.OUTLIER:
            await self.persist_outliers([event])
            row = await self.db.fetchval(
                "SELECT stream_ordering FROM events WHERE event_id = ?", event.event_id
            )
            return int(row)
        if state_before is None:
            raise PersistError("an event with an outcome needs its state before")
        existing = await self.db.fetchone(
            "SELECT stream_ordering, outcome FROM events WHERE event_id = ?", event.event_id
        )
        if existing is not None and existing[1] != Outcome.OUTLIER.value:
            return int(existing[0])

        state_after = dict(state_before)
        if event.is_state and outcome is not Outcome.REJECTED:
            state_after[event.state_tuple] = event.event_id

        parent = await self._parent_group(event)
        head: tuple[set[str], dict[StateKey, str]] | None = None
        if outcome is Outcome.ACCEPTED:
            head = await self._next_head(event, state_after)
        new_groups: list[int] = []
        try:
            async with self.db.transaction() as conn:
                before_group = await self._group_for(conn, event.room_id, state_before, parent, new_groups)
                if state_after == state_before:
                    after_group = before_group
                else:
                    after_group = await self.store.store_state_group(
                        conn, event.room_id, state_after, before_group
                    )
                    new_groups.append(after_group)
                if existing is not None:
                    await conn.execute("DELETE FROM events WHERE event_id = ?", event.event_id)
                    await conn.execute("DELETE FROM event_edges WHERE event_id = ?", event.event_id)
                    await conn.execute("DELETE FROM event_auth WHERE event_id = ?", event.event_id)
                ordering = await self._insert(
                    conn, event, outcome, rejection_reason, before_group, after_group
                )
                if head is not None:
                    await self._write_head(conn, event.room_id, *head)
                if in_transaction is not None:
                    await in_transaction(conn)
        except BaseException:
            for g in new_groups:
                self.store.forget_cached_group(g)
            raise
        return ordering

    async def _parent_group(self, event: Event) -> int | None:
        for prev in event.prev_events:
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
    ) -> int:
        await conn.execute(
            "INSERT INTO rooms (room_id, room_version, created_ts) VALUES (?, ?, ?)"
            " ON CONFLICT (room_id) DO NOTHING",
            event.room_id,
            event.room_version.identifier,
            int(time.time() * 1000),
        )
        ordering = await conn.fetchval(
            "INSERT INTO events (event_id, room_id, type, state_key, sender, membership, depth,"
            " origin_server_ts, outcome, rejection_reason, state_group, state_group_after,"
            " received_ts, json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " RETURNING stream_ordering",
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
        if event.prev_events:
            await conn.executemany(
                "INSERT INTO event_edges (event_id, prev_event_id) VALUES (?, ?)"
                " ON CONFLICT DO NOTHING",
                [(event.event_id, p) for p in dict.fromkeys(event.prev_events)],
            )
        if event.auth_events:
            await conn.executemany(
                "INSERT INTO event_auth (event_id, auth_event_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
                [(event.event_id, a) for a in dict.fromkeys(event.auth_events)],
            )
        return int(ordering)

    async def _next_head(
        self, event: Event, state_after: dict[StateKey, str]
    ) -> tuple[set[str], dict[StateKey, str]]:
        """The forward extremities and current state once ``event`` is accepted.

        Computed before the write transaction (the caller holds the room lock), because
        state resolution may need to load many events.
        """
        later = await self.db.fetchval(
            "SELECT 1 FROM event_edges ed JOIN events e ON e.event_id = ed.event_id"
            " WHERE ed.prev_event_id = ? AND e.outcome = 'accepted' LIMIT 1",
            event.event_id,
        )
        extremities = set(await self.store.get_forward_extremities(event.room_id))
        extremities -= set(event.prev_events)
        if not later:
            # An event that an accepted event already points at is not an extremity.
            extremities.add(event.event_id)
        if extremities == {event.event_id}:
            return extremities, state_after
        states = []
        for ext in sorted(extremities):
            if ext == event.event_id:
                states.append(state_after)
                continue
            after = await self.store.get_state_ids_after(ext)
            if after is not None:
                states.append(after)
        return extremities, await self.resolve(event.room_version, states, {event.event_id: event})

    async def _write_head(
        self, conn: Connection, room_id: str, extremities: set[str], new_state: dict[StateKey, str]
    ) -> None:
        await conn.execute("DELETE FROM forward_extremities WHERE room_id = ?", room_id)
        await conn.executemany(
            "INSERT INTO forward_extremities (room_id, event_id) VALUES (?, ?)",
            [(room_id, e) for e in sorted(extremities)],
        )
        await self._write_current_state(conn, room_id, new_state)

    async def _write_current_state(
        self, conn: Connection, room_id: str, new_state: Mapping[StateKey, str]
    ) -> None:
        rows = await conn.fetchall(
            "SELECT type, state_key, event_id FROM current_state WHERE room_id = ?", room_id
        )
        old = {(t, sk): eid for t, sk, eid in rows}
        removed = [k for k in old if k not in new_state]
        changed = [(k, eid) for k, eid in new_state.items() if old.get(k) != eid]
        for t, sk in removed:
            await conn.execute(
                "DELETE FROM current_state WHERE room_id = ? AND type = ? AND state_key = ?", room_id, t, sk
            )
        if not changed:
            return
        member_ids = [eid for (t, _), eid in changed if t == "m.room.member"]
        memberships: dict[str, str | None] = {}
        for i in range(0, len(member_ids), 500):
            chunk = member_ids[i : i + 500]
            got = await conn.fetchall(
                f"SELECT event_id, membership FROM events WHERE event_id IN ({','.join('?' * len(chunk))})",
                *chunk,
            )
            memberships.update((r[0], r[1]) for r in got)
        for (t, sk), _ in changed:
            if (t, sk) in old:
                await conn.execute(
                    "DELETE FROM current_state WHERE room_id = ? AND type = ? AND state_key = ?",
                    room_id, t, sk,
                )
        await conn.executemany(
            "INSERT INTO current_state (room_id, type, state_key, event_id, membership) VALUES (?, ?, ?, ?, ?)",
            [(room_id, t, sk, eid, memberships.get(eid)) for (t, sk), eid in changed],
        )
