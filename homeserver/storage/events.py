"""The event store: events with their outcome, state snapshots, forward extremities and
the current state of each room.

State is kept as state groups: a snapshot is either full or a delta on a parent group,
and events that do not change state share their predecessor's group, so a message costs
no state rows. Resolved snapshots are cached in memory (bounded). The persister's writes
are ``event_writes.py``'s; here are the reads (events, state, current memberships) and
the state groups.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from homeserver.events.canonical import loads_exact
from homeserver.events.event import Event, StateKey
from homeserver.events.versions import RoomVersion, get_room_version
from homeserver.storage.database import Connection, Database, Row
from homeserver.storage.redactions import RedactionStore
from homeserver.util.iters import batch_iter
from homeserver.util.lru import LruCache

CHUNK = 500
STATE_CACHE_SIZE = 256
ROOM_VERSION_CACHE_SIZE = 10_000
MAX_DELTA_CHAIN = 64


class Outcome(enum.Enum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    SOFT_FAILED = "soft_failed"
    OUTLIER = "outlier"


@dataclass(frozen=True, slots=True)
class StoredEvent:
    event: Event
    outcome: Outcome
    stream_ordering: int
    rejection_reason: str | None


class EventStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.redactions = RedactionStore(db)
        self._room_versions: LruCache[str, RoomVersion] = LruCache(ROOM_VERSION_CACHE_SIZE)
        self._state_cache: LruCache[int, dict[StateKey, str]] = LruCache(STATE_CACHE_SIZE)

    async def _fetch_in(
        self, sql: str, column: str, ids: Sequence[Any],
        fetch: Callable[..., Awaitable[list[Row]]] | None = None,
    ) -> list[Row]:
        """``sql`` (with ``{}`` where the condition "``column`` is one of ``ids``" goes)
        run per chunk of ``ids``: the rows of all chunks."""
        run = fetch or self.db.fetchall
        rows: list[Row] = []
        for chunk in batch_iter(ids, CHUNK):
            cond, args = self.db.dialect.in_list(column, chunk)
            rows.extend(await run(sql.format(cond), *args))
        return rows

    # ------------------------------------------------------------------ rooms

    async def get_room_version(self, room_id: str) -> RoomVersion | None:
        cached = self._room_versions.get(room_id)
        if cached is not None:
            return cached
        value = await self.db.fetchval("SELECT room_version FROM rooms WHERE room_id = ?", room_id)
        if value is None:
            return None
        version = get_room_version(value)
        self._room_versions[room_id] = version
        return version

    # ------------------------------------------------------------------ events

    async def have_events(self, event_ids: Iterable[str]) -> set[str]:
        ids = list(dict.fromkeys(event_ids))
        rows = await self._fetch_in("SELECT event_id FROM events WHERE {}", "event_id", ids)
        return {r[0] for r in rows}

    async def get_event(self, event_id: str) -> StoredEvent | None:
        return (await self.get_events([event_id])).get(event_id)

    async def get_events(self, event_ids: Iterable[str]) -> dict[str, StoredEvent]:
        ids = list(dict.fromkeys(event_ids))
        out: dict[str, StoredEvent] = {}
        rows = await self._fetch_in(
            "SELECT e.event_id, r.room_version, e.outcome, e.stream_ordering, e.rejection_reason,"
            " e.json FROM events e JOIN rooms r ON r.room_id = e.room_id WHERE {}",
            "e.event_id", ids,
        )
        for event_id, version, outcome, ordering, reason, raw in rows:
            event = Event.from_pdu(loads_exact(raw), get_room_version(version), event_id=event_id)
            out[event_id] = StoredEvent(event, Outcome(outcome), int(ordering), reason)
        return out

    async def get_outcomes(self, event_ids: Iterable[str], *, settled: bool = True) -> dict[str, Outcome]:
        """The outcomes of the events we hold. ``settled=False``: without waiting for
        deferred writes (events whose commit is pending are not seen)."""
        ids = list(dict.fromkeys(event_ids))
        fetch = self.db.fetchall if settled else self.db.fetchall_independent
        rows = await self._fetch_in("SELECT event_id, outcome FROM events WHERE {}", "event_id", ids, fetch=fetch)
        return {r[0]: Outcome(r[1]) for r in rows}

    async def get_forward_extremities(self, room_id: str) -> list[str]:
        rows = await self.db.fetchall(
            "SELECT event_id FROM forward_extremities WHERE room_id = ? ORDER BY event_id", room_id
        )
        return [r[0] for r in rows]

    async def forward_extremity_depths(self, room_id: str) -> list[tuple[str, int]]:
        """(event ID, depth) of each of the room's forward extremities (no event is parsed)."""
        rows = await self.db.fetchall(
            "SELECT f.event_id, e.depth FROM forward_extremities f JOIN events e ON e.event_id = f.event_id"
            " WHERE f.room_id = ?",
            room_id,
        )
        return [(r[0], int(r[1])) for r in rows]

    async def get_auth_chain_ids(self, event_ids: Iterable[str]) -> set[str]:
        """Every event reachable through auth_events from ``event_ids`` (not themselves)."""
        seen: set[str] = set()
        frontier = list(dict.fromkeys(event_ids))
        while frontier:
            nxt: list[str] = []
            rows = await self._fetch_in("SELECT auth_event_id FROM event_auth WHERE {}", "event_id", frontier)
            for (auth_id,) in rows:
                if auth_id not in seen:
                    seen.add(auth_id)
                    nxt.append(auth_id)
            frontier = nxt
        return seen

    async def max_stream_ordering(self) -> int:
        value = await self.db.fetchval("SELECT MAX(stream_ordering) FROM events")
        return int(value) if value is not None else 0

    async def accepted_after(self, after: int, limit: int) -> list[tuple[StoredEvent, int]]:
        """The first ``limit`` accepted events above stream ordering ``after``, in stream
        order, each with the time we received it."""
        rows = await self.db.fetchall(
            "SELECT e.event_id, r.room_version, e.stream_ordering, e.received_ts, e.json"
            " FROM events e JOIN rooms r ON r.room_id = e.room_id"
            " WHERE e.stream_ordering > ? AND e.outcome = 'accepted' ORDER BY e.stream_ordering LIMIT ?",
            after, limit,
        )
        out = []
        for event_id, version, ordering, received, raw in rows:
            event = Event.from_pdu(loads_exact(raw), get_room_version(version), event_id=event_id)
            out.append((StoredEvent(event, Outcome.ACCEPTED, int(ordering), None), int(received)))
        return out

    # ------------------------------------------------------------------ state

    async def get_current_state_ids(self, room_id: str) -> dict[StateKey, str]:
        rows = await self.db.fetchall(
            "SELECT type, state_key, event_id FROM current_state WHERE room_id = ?", room_id
        )
        return {(t, sk): eid for t, sk, eid in rows}

    async def get_state_ids_before(self, event_id: str) -> dict[StateKey, str] | None:
        group = await self.db.fetchval("SELECT state_group FROM events WHERE event_id = ?", event_id)
        return None if group is None else dict(await self.load_state_group(int(group)))

    async def get_state_ids_after(self, event_id: str) -> dict[StateKey, str] | None:
        group = await self.db.fetchval(
            "SELECT state_group_after FROM events WHERE event_id = ?", event_id
        )
        return None if group is None else dict(await self.load_state_group(int(group)))

    async def get_state_group_after(self, event_id: str) -> int | None:
        group = await self.db.fetchval(
            "SELECT state_group_after FROM events WHERE event_id = ?", event_id
        )
        return None if group is None else int(group)

    def cached_state_group(self, group: int) -> Mapping[StateKey, str] | None:
        """The state map of a group if it is in the cache (no look-up)."""
        return self._state_cache.get(group)

    async def load_state_group(self, group: int, conn: Connection | None = None) -> Mapping[StateKey, str]:
        """The full state map of a group (read-only: callers copy before changing)."""
        cached = self._state_cache.get(group)
        if cached is not None:
            return cached
        c: Connection = conn or self.db
        chain: list[int] = []
        base: dict[StateKey, str] = {}
        current: int | None = group
        while current is not None:
            hit = self._state_cache.peek(current)
            if hit is not None:
                base = dict(hit)
                break
            chain.append(current)
            current_val = await c.fetchval("SELECT prev_group FROM state_groups WHERE id = ?", current)
            current = int(current_val) if current_val is not None else None
        for g in reversed(chain):
            rows = await c.fetchall(
                "SELECT type, state_key, event_id FROM state_group_entries WHERE state_group = ?", g
            )
            for t, sk, eid in rows:
                if eid:
                    base[(t, sk)] = eid
                else:
                    base.pop((t, sk), None)
        self._cache_state(group, base)
        return base

    def _cache_state(self, group: int, state: dict[StateKey, str]) -> None:
        self._state_cache[group] = state

    async def store_state_group(
        self, conn: Connection, room_id: str, state: Mapping[StateKey, str], parent: int | None
    ) -> int:
        """Write a new state group for ``state``, as a delta on ``parent`` when that is small."""
        entries: list[tuple[str, str, str]]
        prev_group: int | None = None
        chain_length = 0
        if parent is not None:
            parent_state = await self.load_state_group(parent, conn)
            delta = [(t, sk, eid) for (t, sk), eid in state.items() if parent_state.get((t, sk)) != eid]
            delta += [(t, sk, "") for (t, sk) in parent_state if (t, sk) not in state]
            parent_len = await conn.fetchval("SELECT chain_length FROM state_groups WHERE id = ?", parent)
            if parent_len is not None and int(parent_len) < MAX_DELTA_CHAIN and len(delta) * 2 < max(
                len(state), 1
            ) + 2:
                prev_group, chain_length, entries = parent, int(parent_len) + 1, delta
            else:
                entries = [(t, sk, eid) for (t, sk), eid in state.items()]
        else:
            entries = [(t, sk, eid) for (t, sk), eid in state.items()]
        group = await conn.fetchval(
            "INSERT INTO state_groups (room_id, prev_group, chain_length) VALUES (?, ?, ?) RETURNING id",
            room_id,
            prev_group,
            chain_length,
        )
        if entries:
            await conn.write_many(
                "INSERT INTO state_group_entries (state_group, type, state_key, event_id) VALUES (?, ?, ?, ?)",
                [(int(group), t, sk, eid) for t, sk, eid in entries],
            )
        self._cache_state(int(group), dict(state))
        return int(group)

    def forget_cached_group(self, group: int) -> None:
        """Drop a group from the cache (its transaction rolled back)."""
        self._state_cache.pop(group, None)

    async def joined_servers(self, state_ids: Mapping[StateKey, str]) -> set[str]:
        """Servers with at least one joined member in the given state."""
        member_ids = [eid for (t, _), eid in state_ids.items() if t == "m.room.member"]
        servers: set[str] = set()
        rows = await self._fetch_in(
            "SELECT state_key FROM events WHERE {} AND membership = 'join'", "event_id", member_ids
        )
        for (user_id,) in rows:
            if isinstance(user_id, str) and ":" in user_id:
                servers.add(user_id.split(":", 1)[1])
        return servers

    async def joined_members(self, room_id: str) -> list[str]:
        rows = await self.db.fetchall(
            "SELECT state_key FROM current_state WHERE room_id = ? AND type = 'm.room.member'"
            " AND membership = 'join' ORDER BY state_key",
            room_id,
        )
        return [r[0] for r in rows]

    async def state_groups_of(self, event_ids: Iterable[str]) -> list[tuple[str, int | None, int | None]]:
        """(event ID, state group before, state group after) of each event held (an
        outlier has neither)."""
        ids = list(dict.fromkeys(event_ids))
        rows = await self._fetch_in(
            "SELECT event_id, state_group, state_group_after FROM events WHERE {}", "event_id", ids
        )
        return [(r[0], None if r[1] is None else int(r[1]), None if r[2] is None else int(r[2])) for r in rows]

    # ------------------------------------------------------------------ current state

    async def current_state_id(self, room_id: str, key: StateKey, *, settled: bool = True) -> str | None:
        """The event ID at ``key`` in the room's current state. ``settled=False``: without
        waiting for deferred writes (they never change current state)."""
        fetch = self.db.fetchall if settled else self.db.fetchall_independent
        rows = await fetch(
            "SELECT event_id FROM current_state WHERE room_id = ? AND type = ? AND state_key = ?",
            room_id, key[0], key[1],
        )
        return rows[0][0] if rows and isinstance(rows[0][0], str) else None

    async def rooms_with_state(self, event_type: str, state_key: str = "") -> list[tuple[str, str]]:
        """(room ID, event ID) of every room whose current state has ``(event_type, state_key)``."""
        rows = await self.db.fetchall(
            "SELECT room_id, event_id FROM current_state WHERE type = ? AND state_key = ?", event_type, state_key
        )
        return [(r[0], r[1]) for r in rows]

    async def current_membership(self, room_id: str, user_id: str) -> tuple[str | None, str | None]:
        """(membership, member event ID) of the user in the room's current state."""
        row = await self.db.fetchone(
            "SELECT membership, event_id FROM current_state WHERE room_id = ? AND type = 'm.room.member'"
            " AND state_key = ?",
            room_id, user_id,
        )
        return (None, None) if row is None else (row[0], row[1])

    async def has_joined_member_of(self, room_id: str, server_name: str) -> bool:
        """Whether a user of ``server_name`` is joined to the room in its current state."""
        row = await self.db.fetchval(
            "SELECT 1 FROM current_state WHERE room_id = ? AND type = 'm.room.member'"
            " AND membership = 'join' AND state_key LIKE ? LIMIT 1",
            room_id, "%:" + server_name,
        )
        return row is not None

    async def memberships_of_user(self, user_id: str) -> dict[str, str]:
        """room ID -> the user's membership, in every room whose current state has one."""
        rows = await self.db.fetchall(
            "SELECT room_id, membership FROM current_state WHERE type = 'm.room.member' AND state_key = ?",
            user_id,
        )
        return {r[0]: r[1] for r in rows if isinstance(r[1], str)}

    async def joined_rooms(self, user_id: str) -> list[str]:
        rows = await self.db.fetchall(
            "SELECT room_id FROM current_state WHERE type = 'm.room.member' AND state_key = ? AND membership = 'join'",
            user_id,
        )
        return [r[0] for r in rows]

    async def joined_member_events(self, room_ids: Sequence[str], limit: int) -> list[tuple[str, str]]:
        """(user ID, member event ID) of the joined members of ``room_ids`` (one list, not
        chunked: the caller chunks), by user ID, at most ``limit``."""
        cond, args = self.db.dialect.in_list("room_id", room_ids)
        rows = await self.db.fetchall(
            "SELECT state_key, event_id FROM current_state WHERE type = 'm.room.member' AND membership = 'join'"
            f" AND {cond} ORDER BY state_key LIMIT ?",
            *args, limit,
        )
        return [(r[0], r[1]) for r in rows]

    async def member_memberships(self, room_id: str) -> list[tuple[str, str, str | None]]:
        """(user ID, member event ID, membership) of every member event in the room's current state."""
        rows = await self.db.fetchall(
            "SELECT state_key, event_id, membership FROM current_state"
            " WHERE room_id = ? AND type = 'm.room.member'",
            room_id,
        )
        return [(r[0], r[1], r[2]) for r in rows]

    async def memberships_of(self, event_ids: Iterable[str]) -> dict[str, str | None]:
        """event ID -> the membership a member event sets, read from its column."""
        ids = list(dict.fromkeys(event_ids))
        rows = await self._fetch_in("SELECT event_id, membership FROM events WHERE {}", "event_id", ids)
        return {r[0]: r[1] for r in rows}

    async def last_join_ordering(self, room_id: str, user_id: str) -> int | None:
        """The stream ordering of the user's latest accepted join event in the room."""
        value = await self.db.fetchval(
            "SELECT MAX(stream_ordering) FROM events WHERE room_id = ? AND type = 'm.room.member'"
            " AND state_key = ? AND membership = 'join' AND outcome = 'accepted'",
            room_id, user_id,
        )
        return None if value is None else int(value)


def event_json(event: Event) -> str:
    return json.dumps(event.pdu, ensure_ascii=False, separators=(",", ":"))
