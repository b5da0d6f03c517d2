"""What the inbound pipeline remembers between events: events it decided or read (with
their outcomes; auth events are read for every event of a room), the state after the
events it persisted, and the outcomes looked up for a whole claimed batch at once.

Deferred writes are not visible to every read yet: these caches know such events.
When deferred writes fail, everything here is forgotten (it may say stored what is not).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from homeserver.events.event import Event, StateKey
from homeserver.rooms.checks.auth import CREATE, create_event_id
from homeserver.storage.events import EventStore, Outcome
from homeserver.util.lru import LruCache


class EventCache:
    def __init__(self, store: EventStore, size: int) -> None:
        self._store = store
        self._size = size
        # event ID -> (event, outcome).
        self.events: LruCache[str, tuple[Event, Outcome]] = LruCache(size)
        # event ID -> state after it, for events this worker persisted (shared maps: a
        # message's state after is its state before, the same object).
        self.state_after: LruCache[str, Mapping[StateKey, str]] = LruCache(size)
        # event ID -> outcome looked up for a claimed batch (None: not stored).
        self.prefetched: dict[str, Outcome | None] = {}

    def forget_all(self) -> None:
        self.events.clear()
        self.state_after.clear()
        self.prefetched.clear()

    def prefetch_found(self, event_ids: Sequence[str], found: Mapping[str, Outcome]) -> None:
        for event_id in event_ids:
            self.prefetched[event_id] = found.get(event_id)
        while len(self.prefetched) > self._size:
            self.prefetched.pop(next(iter(self.prefetched)))

    def remember(self, event: Event, outcome: Outcome) -> None:
        self.events[event.event_id] = (event, outcome)

    async def get_events(self, event_ids: Iterable[str]) -> dict[str, tuple[Event, Outcome]]:
        """The events we hold of ``event_ids``, with their outcomes."""
        out: dict[str, tuple[Event, Outcome]] = {}
        wanted: list[str] = []
        for event_id in event_ids:
            hit = self.events.peek(event_id)
            if hit is not None:
                out[event_id] = hit
            else:
                wanted.append(event_id)
        if wanted:
            for event_id, stored in (await self._store.get_events(wanted)).items():
                out[event_id] = (stored.event, stored.outcome)
                if stored.outcome is not Outcome.OUTLIER:
                    self.remember(stored.event, stored.outcome)
        return out

    async def add_create(self, event: Event, auth_state: dict[StateKey, Event]) -> None:
        """Room v12 events do not cite the create event: its ID is the room ID."""
        if CREATE in auth_state or not event.room_version.room_id_is_create_hash:
            return
        found = await self.get_events([create_event_id(event.room_id)])
        for ev, _ in found.values():
            auth_state[CREATE] = ev
