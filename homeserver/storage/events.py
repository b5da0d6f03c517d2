"""The event store: events with their outcome, state snapshots, forward extremities and
the current state of each room.

State is kept as state groups: a snapshot is either full or a delta on a parent group,
and events that do not change state share their predecessor's group, so a message costs
no state rows. Resolved snapshots are cached in memory (bounded).
"""

from __future__ import annotations

import enum
import json
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from homeserver.events.canonical import loads
from homeserver.events.event import Event, StateKey
from homeserver.events.versions import RoomVersion, get_room_version
from homeserver.storage.database import Connection, Database

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


def _chunks(items: list[str]) -> Iterable[list[str]]:
    for i in range(0, len(items), CHUNK):
        yield items[i : i + CHUNK]


def _placeholders(n: int) -> str:
    return ",".join("?" * n)


class EventStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._room_versions: OrderedDict[str, RoomVersion] = OrderedDict()
        self._state_cache: OrderedDict[int, dict[StateKey, str]] = OrderedDict()
        # Redaction event ID -> whether it applies to its target (rooms/redactions.py): the
        # verdict depends only on the two events and the state before the redaction.
        self.redaction_verdicts: OrderedDict[str, bool] = OrderedDict()

    # ------------------------------------------------------------------ rooms

    async def get_room_version(self, room_id: str) -> RoomVersion | None:
        cached = self._room_versions.get(room_id)
        if cached is not None:
            return cached
        value = await self.db.fetchval("SELECT room_version FROM rooms WHERE room_id = ?", room_id)
        if value is None:
            return None
        version = get_room_version(value)
        self._remember_room(room_id, version)
        return version

    def _remember_room(self, room_id: str, version: RoomVersion) -> None:
        self._room_versions[room_id] = version
        while len(self._room_versions) > ROOM_VERSION_CACHE_SIZE:
            self._room_versions.popitem(last=False)

    # ------------------------------------------------------------------ events

    async def have_events(self, event_ids: Iterable[str]) -> set[str]:
        ids = list(dict.fromkeys(event_ids))
        found: set[str] = set()
        for chunk in _chunks(ids):
            rows = await self.db.fetchall(
                f"SELECT event_id FROM events WHERE event_id IN ({_placeholders(len(chunk))})", *chunk
            )
            found.update(r[0] for r in rows)
        return found

    async def get_event(self, event_id: str) -> StoredEvent | None:
        return (await self.get_events([event_id])).get(event_id)

    async def get_events(self, event_ids: Iterable[str]) -> dict[str, StoredEvent]:
        ids = list(dict.fromkeys(event_ids))
        out: dict[str, StoredEvent] = {}
        for chunk in _chunks(ids):
            rows = await self.db.fetchall(
                "SELECT e.event_id, r.room_version, e.outcome, e.stream_ordering, e.rejection_reason,"
                " e.json FROM events e JOIN rooms r ON r.room_id = e.room_id"
                f" WHERE e.event_id IN ({_placeholders(len(chunk))})",
                *chunk,
            )
            for event_id, version, outcome, ordering, reason, raw in rows:
                event = Event.from_pdu(loads(raw), get_room_version(version), event_id=event_id)
                out[event_id] = StoredEvent(event, Outcome(outcome), int(ordering), reason)
        return out

    async def get_outcomes(self, event_ids: Iterable[str], *, settled: bool = True) -> dict[str, Outcome]:
        """The outcomes of the events we hold. ``settled=False``: without waiting for
        deferred writes (events whose commit is pending are not seen)."""
        ids = list(dict.fromkeys(event_ids))
        out: dict[str, Outcome] = {}
        fetch = self.db.fetchall if settled else self.db.fetchall_independent
        for chunk in _chunks(ids):
            rows = await fetch(
                f"SELECT event_id, outcome FROM events WHERE event_id IN ({_placeholders(len(chunk))})",
                *chunk,
            )
            out.update((r[0], Outcome(r[1])) for r in rows)
        return out

    async def get_forward_extremities(self, room_id: str) -> list[str]:
        rows = await self.db.fetchall(
            "SELECT event_id FROM forward_extremities WHERE room_id = ? ORDER BY event_id", room_id
        )
        return [r[0] for r in rows]

    async def get_auth_chain_ids(self, event_ids: Iterable[str]) -> set[str]:
        """Every event reachable through auth_events from ``event_ids`` (not themselves)."""
        seen: set[str] = set()
        frontier = list(dict.fromkeys(event_ids))
        while frontier:
            nxt: list[str] = []
            for chunk in _chunks(frontier):
                rows = await self.db.fetchall(
                    "SELECT auth_event_id FROM event_auth"
                    f" WHERE event_id IN ({_placeholders(len(chunk))})",
                    *chunk,
                )
                for (auth_id,) in rows:
                    if auth_id not in seen:
                        seen.add(auth_id)
                        nxt.append(auth_id)
            frontier = nxt
        return seen

    async def max_stream_ordering(self) -> int:
        value = await self.db.fetchval("SELECT MAX(stream_ordering) FROM events")
        return int(value) if value is not None else 0

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
            self._state_cache.move_to_end(group)
            return cached
        c: Connection = conn or self.db
        chain: list[int] = []
        base: dict[StateKey, str] = {}
        current: int | None = group
        while current is not None:
            hit = self._state_cache.get(current)
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
        self._state_cache.move_to_end(group)
        while len(self._state_cache) > STATE_CACHE_SIZE:
            self._state_cache.popitem(last=False)

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
        for chunk in _chunks(member_ids):
            rows = await self.db.fetchall(
                f"SELECT state_key FROM events WHERE event_id IN ({_placeholders(len(chunk))})"
                " AND membership = 'join'",
                *chunk,
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


def event_json(event: Event) -> str:
    return json.dumps(event.pdu, ensure_ascii=False, separators=(",", ":"))
