"""A room's head (its forward extremities and current state) and how an accepted event
moves it; state resolution over stored events; the persister's caches of heads and of
the state group after each recent event.

Only the persister writes heads and state groups, under the room lock, and updates
these caches after commit: in one process they are authoritative.

Forks cost what their distinct states cost, not what their number does: the states of
prev events and forward extremities are taken as state groups, each distinct group is
loaded once, equal states are resolved once (not at all when they agree), and the
resolution of a set of groups is cached under that set. N forks of one state (say, N
messages citing the same parent) are N cheap steps, not N resolutions of N states.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
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
# Resolutions kept, keyed by the set of state groups resolved (each a full state map).
RESOLVED_CACHE_SETS = 32
# Above this many states, duplicates are found by hashing rather than pairwise comparison.
_PAIRWISE_DEDUP = 8


class PersistError(Exception):
    """The event cannot be persisted as asked (for example, a prev event has no state)."""


@dataclass(frozen=True, slots=True)
class Head:
    """A room's forward extremities and current state, as committed."""

    extremities: frozenset[str]
    state: dict[StateKey, str]
    # When known: the only entries that differ from the previous head's state.
    delta: tuple[tuple[StateKey, str], ...] | None = None


@dataclass(slots=True)
class ResolutionCounts:
    """What state resolution has cost so far (tests and benchmarks read these)."""

    # Runs of the state resolution algorithm (over two or more distinct states).
    resolutions: int = 0
    # Resolutions answered from the cache of resolved group sets instead.
    cached: int = 0
    # State maps read (a state group's map, cached or not) as the input of a resolution.
    states_read: int = 0


class RoomHeads:
    """Heads and state groups as the persister sees them, cached."""

    def __init__(self, store: EventStore, writes: EventWriteStore) -> None:
        self.store = store
        self.writes = writes
        self.heads: LruCache[str, Head] = LruCache(HEAD_CACHE_ROOMS)
        self.group_after: LruCache[str, int] = LruCache(GROUP_CACHE_EVENTS)
        # The resolved state of a set of state groups (read-only: callers copy).
        self.resolved: LruCache[frozenset[int], dict[StateKey, str]] = LruCache(RESOLVED_CACHE_SETS)
        self.counts = ResolutionCounts()
        # Prev events cited by accepted events whose deferred writes are not committed yet
        # (how many such events cite each).
        self._pending_children: dict[str, int] = {}

    def clear(self) -> None:
        self.heads.clear()
        self.group_after.clear()
        self.resolved.clear()
        self._pending_children.clear()

    def deferred(self, event: Event) -> None:
        """``event`` was accepted and its writes deferred: until ``committed``, its prev
        events have a child the database may not show yet."""
        for prev in event.prev_events:
            self._pending_children[prev] = self._pending_children.get(prev, 0) + 1

    def committed(self, event: Event) -> None:
        """``event``'s deferred writes are committed (or failed: then ``clear`` ran)."""
        for prev in event.prev_events:
            left = self._pending_children.get(prev, 0) - 1
            if left > 0:
                self._pending_children[prev] = left
            else:
                self._pending_children.pop(prev, None)

    async def has_accepted_child(self, event_id: str) -> bool:
        """Whether an accepted event names ``event_id`` among its prev events: the ones
        whose writes are deferred from memory, the rest without waiting for those writes
        (a fork must not cost a commit)."""
        if event_id in self._pending_children:
            return True
        return await self.writes.has_accepted_child(event_id, settled=False)

    # ------------------------------------------------------------------ state

    async def compute_state_before(
        self, room_version: RoomVersion, prev_event_ids: Sequence[str]
    ) -> dict[StateKey, str]:
        """The state before an event: the resolution of the states after its prev events
        (prev events that share a state group count once)."""
        prevs = list(dict.fromkeys(prev_event_ids))
        groups = await self.groups_after(prevs)
        for prev in prevs:
            if groups.get(prev) is None:
                raise PersistError(f"prev event {prev} has no known state")
        return dict(await self.resolve_groups(room_version, {g for g in groups.values() if g is not None}))

    async def groups_after(self, event_ids: Iterable[str]) -> dict[str, int | None]:
        """The state group after each event (None: not held, or held without state): from
        the cache, the rest in one look-up (then cached)."""
        out: dict[str, int | None] = {}
        missing: list[str] = []
        peek = self.group_after.peek
        for event_id in event_ids:
            group = peek(event_id)
            out[event_id] = group
            if group is None:
                missing.append(event_id)
        if missing:
            for event_id, _, after in await self.store.state_groups_of(missing):
                out[event_id] = after
                if after is not None:
                    self.group_after[event_id] = after
        return out

    async def resolve_groups(self, room_version: RoomVersion, groups: set[int]) -> Mapping[StateKey, str]:
        """The resolution of the states of ``groups`` (read-only: callers copy). One group
        is its own state; a set resolved before comes from the cache."""
        if not groups:
            return {}
        if len(groups) == 1:
            self.counts.states_read += 1
            return await self.store.load_state_group(next(iter(groups)))
        key = frozenset(groups)
        cached = self.resolved.get(key)
        if cached is not None:
            self.counts.cached += 1
            return cached
        states = [await self.store.load_state_group(g) for g in sorted(groups)]
        self.counts.states_read += len(states)
        resolved = await self.resolve(room_version, states)
        self.resolved[key] = resolved
        return resolved

    async def resolve(
        self,
        room_version: RoomVersion,
        states: Sequence[Mapping[StateKey, str]],
        unstored: Mapping[str, Event] | None = None,
    ) -> dict[StateKey, str]:
        """State resolution over stored events (plus ``unstored`` ones being persisted),
        loading what it needs first. Equal states count once (resolution is over the set
        of states): when they all agree, nothing is resolved."""
        states = distinct_states(states)
        if not states:
            return {}
        if len(states) == 1:
            return dict(states[0])
        self.counts.resolutions += 1
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

    async def next_head(
        self, event: Event, state_after: dict[StateKey, str], old: Head, parent: int | None = None
    ) -> Head:
        """The forward extremities and current state once ``event`` is accepted.
        ``parent``: the state group after its first prev event, when known (its state is
        then likely the event's own: a message shares it).

        Computed before the write transaction (the caller holds the room lock), because
        state resolution may need to load many events. The current state is the resolution
        of the states after the extremities, taken by state group: extremities that share a
        group (forks of one state) cost one state, and when the result is the old current
        state the head says so (an empty delta: nothing to write, the persister's fast path).
        """
        prevs = set(event.prev_events)
        later = False
        if not prevs <= old.extremities:
            # Out of order: an accepted event may already point at this one, in which
            # case it is not an extremity.
            later = await self.has_accepted_child(event.event_id)
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
        others = [ext for ext in extremities if ext != event.event_id]
        groups = {g for g in (await self.groups_after(others)).values() if g is not None}
        resolved: Mapping[StateKey, str]
        if later:
            resolved = await self.resolve_groups(event.room_version, groups)
        else:
            own = parent if parent is not None and await self._state_is(parent, state_after) else None
            if own is not None:
                resolved = await self.resolve_groups(event.room_version, groups | {own})
            else:
                states = [await self.store.load_state_group(g) for g in sorted(groups)]
                self.counts.states_read += len(states)
                resolved = await self.resolve(event.room_version, [state_after, *states], {event.event_id: event})
        if resolved is old.state or resolved == old.state:
            return Head(frozenset(extremities), old.state, ())
        return Head(frozenset(extremities), dict(resolved))

    async def _state_is(self, group: int, state: Mapping[StateKey, str]) -> bool:
        """Whether ``group``'s state is ``state``."""
        group_state = await self.store.load_state_group(group)
        return group_state is state or group_state == state

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


def distinct_states(states: Sequence[Mapping[StateKey, str]]) -> list[Mapping[StateKey, str]]:
    """``states`` without repeats (the first of equal ones kept, in order)."""
    if len(states) <= _PAIRWISE_DEDUP:
        out: list[Mapping[StateKey, str]] = []
        for s in states:
            if not any(s is o or s == o for o in out):
                out.append(s)
        return out
    seen: dict[frozenset[tuple[StateKey, str]], Mapping[StateKey, str]] = {}
    for s in states:
        seen.setdefault(frozenset(s.items()), s)
    return list(seen.values())
