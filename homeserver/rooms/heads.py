"""A room's head (its forward extremities and current state) and how an accepted event
moves it; state resolution over stored events; the persister's caches of heads and of
the state group after each recent event.

Only the persister writes heads and state groups, under the room lock, and updates
these caches after commit: in one process they are authoritative.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from homeserver.events.errors import StateResolutionError
from homeserver.events.event import Event, StateKey
from homeserver.events.stateres import resolve_state
from homeserver.events.versions import RoomVersion
from homeserver.storage.database import Connection
from homeserver.storage.event_writes import EventWriteStore
from homeserver.storage.events import EventStore
from homeserver.util.lru import LruCache

HEAD_CACHE_ROOMS = 1_000
GROUP_CACHE_EVENTS = 50_000


class PersistError(Exception):
    """The event cannot be persisted as asked (for example, a prev event has no state)."""


@dataclass(frozen=True, slots=True)
class Head:
    """A room's forward extremities and current state, as committed."""

    extremities: frozenset[str]
    state: dict[StateKey, str]
    # When known: the only entries that differ from the previous head's state.
    delta: tuple[tuple[StateKey, str], ...] | None = None


class RoomHeads:
    """Heads and state groups as the persister sees them, cached."""

    def __init__(self, store: EventStore, writes: EventWriteStore) -> None:
        self.store = store
        self.writes = writes
        self.heads: LruCache[str, Head] = LruCache(HEAD_CACHE_ROOMS)
        self.group_after: LruCache[str, int] = LruCache(GROUP_CACHE_EVENTS)

    def clear(self) -> None:
        self.heads.clear()
        self.group_after.clear()

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

    async def parent_group(self, event: Event) -> int | None:
        """The state group after the first of the event's prev events that has one."""
        for prev in event.prev_events:
            group = self.group_after.get(prev)
            if group is None:
                group = await self.store.get_state_group_after(prev)
            if group is not None:
                return group
        return None

    async def group_for(
        self,
        conn: Connection,
        room_id: str,
        state: Mapping[StateKey, str],
        parent: int | None,
        new_groups: list[int],
    ) -> int:
        """``parent`` if its state is ``state``, else a new group (added to ``new_groups``)."""
        if parent is not None:
            parent_state = await self.store.load_state_group(parent, conn)
            if parent_state == state:
                return parent
        group = await self.store.store_state_group(conn, room_id, state, parent)
        new_groups.append(group)
        return group

    # ------------------------------------------------------------------ heads

    def cached_state_id(self, room_id: str, key: StateKey) -> tuple[bool, str | None]:
        """(whether the room's head is cached, the event ID at ``key`` in it)."""
        cached = self.heads.get(room_id)
        return (False, None) if cached is None else (True, cached.state.get(key))

    async def load(self, room_id: str) -> Head:
        cached = self.heads.get(room_id)
        if cached is not None:
            return cached
        extremities = frozenset(await self.store.get_forward_extremities(room_id))
        return Head(extremities, await self.store.get_current_state_ids(room_id))

    async def next_head(self, event: Event, state_after: dict[StateKey, str], old: Head) -> Head:
        """The forward extremities and current state once ``event`` is accepted.

        Computed before the write transaction (the caller holds the room lock), because
        state resolution may need to load many events.
        """
        prevs = set(event.prev_events)
        later = False
        if not prevs <= old.extremities:
            # Out of order: an accepted event may already point at this one, in which
            # case it is not an extremity.
            later = await self.writes.has_accepted_child(event.event_id)
        extremities = set(old.extremities) - prevs
        if not later:
            extremities.add(event.event_id)
        if extremities == {event.event_id} and prevs == old.extremities and len(prevs) == 1:
            # The linear case: the state before the event is the current state.
            if not event.is_state:
                return Head(frozenset(extremities), old.state, ())
            key = event.state_tuple
            if state_after.get(key) == old.state.get(key):
                return Head(frozenset(extremities), old.state, ())
            return Head(frozenset(extremities), {**old.state, key: event.event_id}, ((key, event.event_id),))
        if extremities == {event.event_id}:
            return Head(frozenset(extremities), state_after)
        states = []
        for ext in sorted(extremities):
            if ext == event.event_id:
                states.append(state_after)
                continue
            after = await self.store.get_state_ids_after(ext)
            if after is not None:
                states.append(after)
        resolved = await self.resolve(event.room_version, states, {event.event_id: event})
        return Head(frozenset(extremities), resolved)

    async def write(self, conn: Connection, event: Event, old: Head, new: Head) -> None:
        """Write the move from ``old`` to ``new`` (forward extremities, current state)."""
        room_id = event.room_id
        known = {event.event_id: event.membership} if event.type == "m.room.member" else {}
        removed, added = moved_extremities(old, new)
        await self.writes.move_forward_extremities(conn, room_id, removed, added)
        if new.delta is not None:
            if new.delta:
                await self.writes.write_current_state(conn, room_id, old.state, dict(new.delta), known, partial=True)
        elif new.state is not old.state:
            await self.writes.write_current_state(conn, room_id, old.state, new.state, known)


def moved_extremities(old: Head | None, new: Head | None) -> tuple[list[str], list[str]]:
    """The forward extremities ``new`` drops and adds (sorted), from ``old``."""
    if old is None or new is None:
        return [], []
    return sorted(old.extremities - new.extremities), sorted(new.extremities - old.extremities)
