"""Persisting events: the one place that writes events, state snapshots, forward
extremities and current state, in one database transaction per event.

Outcomes decide what an event may touch: an accepted event moves the room's forward
extremities and current state; soft-failed and rejected events are stored with their
state but never become part of the current state; outliers (auth chains and state
fetched from other servers) are stored with no state at all; backfilled history is stored
with its state but below everything else in stream order, touching neither extremities
nor current state (``persist_historical``). Persisting the same event twice has one
effect. Callers serialise work per room with ``room_lock``. The statements are
``storage/event_writes.py``'s; heads, state groups and their caches ``rooms/heads.py``'s.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from homeserver.events.event import Event, StateKey
from homeserver.events.versions import RoomVersion
from homeserver.notifier import Notifier
from homeserver.rooms.heads import Head, PersistError, RoomHeads, moved_extremities
from homeserver.storage.database import Connection
from homeserver.storage.event_writes import CollectedWrites, EventWriteStore
from homeserver.storage.events import EventStore, Outcome
from homeserver.util.clock import SYSTEM_CLOCK, Clock
from homeserver.util.locks import KeyedLock

log = logging.getLogger(__name__)

InTransaction = Callable[[Connection], Awaitable[None]]
# Called after an event's transaction commits (event, outcome, stream ordering): wakes
# /sync long-polls and similar. Listeners must be quick and must not raise.

__all__ = ["EventPersister", "Historical", "InTransaction", "PersistError"]

_UNCHECKED = object()


@dataclass(frozen=True, slots=True)
class Historical:
    """A backfilled event to store: its outcome (accepted or rejected) and the state before it."""

    event: Event
    outcome: Outcome
    state_before: Mapping[StateKey, str]
    rejection_reason: str | None = None


class EventPersister:
    def __init__(
        self, store: EventStore, *, writes: EventWriteStore | None = None, clock: Clock = SYSTEM_CLOCK,
        notifier: Notifier | None = None,
    ) -> None:
        self.store = store
        self.db = store.db
        self.writes = writes or EventWriteStore(store.db, clock)
        self._locks: KeyedLock[str] = KeyedLock()
        # Told of each event once its transaction has committed (wakes /sync).
        self.notifier = notifier if notifier is not None else Notifier(clock)
        self.heads = RoomHeads(store, self.writes)
        # Commits happen in stream order, so a reader that has seen ordering N has seen
        # everything below it (PostgreSQL would otherwise commit concurrent rooms out of order).
        self._commit_lock = asyncio.Lock()
        # Bumped when deferred writes failed and the caches above were dropped: work
        # computed from the caches before that must not be deferred.
        self.generation = 0
        self.db.on_deferred_failure(self._forget_all)

    def _forget_all(self) -> None:
        self.heads.clear()
        self.writes.forget_ordering()
        self.generation += 1

    def room_lock(self, room_id: str) -> AbstractAsyncContextManager[None]:
        """The lock that serialises persisting and creating events in one room
        (``async with persister.room_lock(room_id):``, once per call)."""
        return self._locks(room_id)

    # ------------------------------------------------------------------ state

    async def compute_state_before(
        self, room_version: RoomVersion, prev_event_ids: Sequence[str]
    ) -> dict[StateKey, str]:
        """The state before an event: the resolution of the states after its prev events."""
        return await self.heads.compute_state_before(room_version, prev_event_ids)

    async def resolve(
        self,
        room_version: RoomVersion,
        states: Sequence[Mapping[StateKey, str]],
        unstored: Mapping[str, Event] | None = None,
    ) -> dict[StateKey, str]:
        """State resolution over stored events (plus ``unstored`` ones being persisted)."""
        return await self.heads.resolve(room_version, states, unstored)

    async def forward_extremities(self, room_id: str) -> frozenset[str]:
        """The room's forward extremities (from the cache when warm)."""
        return (await self.heads.load(room_id)).extremities

    async def current_state(self, room_id: str) -> Mapping[StateKey, str]:
        """The room's current state (read-only): from the cache when warm, else read."""
        return (await self.heads.load(room_id)).state

    async def current_state_id(self, room_id: str, key: StateKey) -> str | None:
        """The event ID at ``key`` in the room's current state: from the cache when warm,
        else one look-up (the room's whole state is not loaded for it). The look-up does not
        wait for deferred writes (the /send door asks): they never change current state."""
        cached, event_id = self.heads.cached_state_id(room_id, key)
        if cached:
            return event_id
        return await self.store.current_state_id(room_id, key, settled=False)

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
                    await self.writes.insert_event(conn, event, Outcome.OUTLIER, None, None, None, if_absent=True)
                    have.add(event.event_id)
        except BaseException:
            self.writes.forget_ordering()
            raise

    async def persist_historical(self, items: Sequence[Historical]) -> dict[str, int]:
        """Store backfilled events (history from before we joined): ``items`` in
        topological order, oldest first, each with its outcome and the state before it.

        They get stream orderings below every ordering in the database (negative and
        decreasing, the newest of the batch highest), so /messages pages back into them;
        they never touch the forward extremities or the current state, and the notifier
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
        writes = self.writes
        try:
            async with self._commit_lock, self.db.transaction() as conn:
                held = await writes.outcomes_in(conn, [i.event.event_id for i in items])
                todo = [i for i in items if held.get(i.event.event_id, Outcome.OUTLIER.value) == Outcome.OUTLIER.value]
                if not todo:
                    return {}
                low = await writes.lowest_ordering(conn)
                base = min(low if low is not None else 0, 0) - len(todo)
                for index, item in enumerate(todo):
                    event = item.event
                    parent: int | None = None
                    for prev in event.prev_events:
                        parent = after_groups.get(prev) or self.heads.group_after.get(prev)
                        if parent is None:
                            parent = await writes.state_group_after(conn, prev)
                        if parent is not None:
                            break
                    state_after = dict(item.state_before)
                    if event.is_state and item.outcome is not Outcome.REJECTED:
                        state_after[event.state_tuple] = event.event_id
                    before_group = await self.heads.group_for(conn, room_id, item.state_before, parent, new_groups)
                    if state_after == item.state_before:
                        after_group = before_group
                    else:
                        after_group = await self.store.store_state_group(conn, room_id, state_after, before_group)
                        new_groups.append(after_group)
                    if event.event_id in held:  # an outlier, taken into the timeline
                        await writes.delete_event(conn, event.event_id)
                    stored[event.event_id] = await writes.insert_event(
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
            self.heads.group_after[event_id] = group
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
            stored = await self.writes.ordering_of(event.event_id)
            if stored is None:
                raise PersistError(f"outlier {event.event_id} was not stored")
            return stored, None
        if state_before is None:
            raise PersistError("an event with an outcome needs its state before")
        if generation is not None and generation != self.generation:
            defer = False
        try:
            return await self._persist_event(
                event, outcome, state_before, rejection_reason, in_transaction, stored_outcome, defer
            )
        except Exception as e:
            if stored_outcome is _UNCHECKED or not self.db.dialect.is_unique_violation(e):
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
        writes = self.writes
        if stored_outcome is _UNCHECKED:
            row = await writes.ordering_and_outcome(event.event_id)
            if row is not None and row[1] is not Outcome.OUTLIER:
                return row[0], None
            existing = row is not None
        elif stored_outcome is None:
            existing = False
        elif stored_outcome is Outcome.OUTLIER:
            existing = True
        else:
            return (await writes.ordering_of(event.event_id) or 0), None

        state_after = dict(state_before)
        if event.is_state and outcome is not Outcome.REJECTED:
            state_after[event.state_tuple] = event.event_id

        parent = await self.heads.parent_group(event)
        old_head: Head | None = None
        new_head: Head | None = None
        if outcome is Outcome.ACCEPTED:
            old_head = await self.heads.load(event.room_id)
            new_head = await self.heads.next_head(event, state_after, old_head, parent)
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
                    and writes.ordering_known and not self._commit_lock.locked()):
                return await self._persist_deferred(event, outcome, rejection_reason, parent, old_head, new_head)
            if writes.writes_in_one_statement(event):
                return await self._persist_one_statement(event, outcome, rejection_reason, parent, old_head, new_head)
        new_groups: list[int] = []
        try:
            async with self._commit_lock, self.db.transaction() as conn:
                before_group = await self.heads.group_for(conn, event.room_id, state_before, parent, new_groups)
                if state_after == state_before:
                    after_group = before_group
                else:
                    after_group = await self.store.store_state_group(
                        conn, event.room_id, state_after, before_group
                    )
                    new_groups.append(after_group)
                if existing:
                    await writes.delete_event(conn, event.event_id)
                ordering = await writes.insert_event(
                    conn, event, outcome, rejection_reason, before_group, after_group, new_room
                )
                if old_head is not None and new_head is not None:
                    await self.heads.write(conn, event, old_head, new_head)
                if in_transaction is not None:
                    await in_transaction(conn)
        except BaseException:
            for g in new_groups:
                self.store.forget_cached_group(g)
            self.heads.heads.pop(event.room_id)
            writes.forget_ordering()
            raise
        self._remember(event, after_group, new_head)
        self._notify(event, outcome, ordering)
        return ordering, None

    async def _persist_deferred(
        self, event: Event, outcome: Outcome, rejection_reason: str | None, group: int,
        old_head: Head | None, new_head: Head | None,
    ) -> tuple[int, asyncio.Future[None]]:
        """The fast path: an event that changes no state, with everything cached. Nothing
        here suspends (the collector's writes return at once and the ordering is known), so
        no other task can change the caches between the checks of the caller and the deferral."""
        collect = CollectedWrites()
        writes = self.writes
        if writes.writes_in_one_statement(event):
            ordering = await writes.allocate_ordering(collect)
            removed, added = moved_extremities(old_head, new_head)
            collect.statements.append(
                writes.one_statement(event, outcome, rejection_reason, group, removed, added, ordering)
            )
        else:
            ordering = await writes.insert_event(collect, event, outcome, rejection_reason, group, group, False)
            if old_head is not None and new_head is not None:
                await self.heads.write(collect, event, old_head, new_head)
        collect.call_after(lambda: self._notify(event, outcome, ordering))
        commit = collect.defer(self.db)
        if outcome is Outcome.ACCEPTED:
            # Until it commits, its prevs have a child the database does not show yet.
            self.heads.deferred(event)
            generation = self.generation

            def committed(_: asyncio.Future[None]) -> None:
                if generation == self.generation:  # else the caches were dropped meanwhile
                    self.heads.committed(event)

            commit.add_done_callback(committed)
        self._remember(event, group, new_head)
        return ordering, commit

    async def _persist_one_statement(
        self, event: Event, outcome: Outcome, rejection_reason: str | None, group: int,
        old_head: Head | None, new_head: Head | None,
    ) -> tuple[int, None]:
        """PostgreSQL's fast path when the write cannot be deferred: the one statement
        (a single statement is its own transaction), committed before returning."""
        writes = self.writes
        try:
            async with self._commit_lock:
                ordering = await writes.allocate_ordering(self.db)
                removed, added = moved_extremities(old_head, new_head)
                await writes.run(
                    writes.one_statement(event, outcome, rejection_reason, group, removed, added, ordering)
                )
        except BaseException:
            self.heads.heads.pop(event.room_id)
            writes.forget_ordering()
            raise
        self._remember(event, group, new_head)
        self._notify(event, outcome, ordering)
        return ordering, None

    def _remember(self, event: Event, group_after: int, new_head: Head | None) -> None:
        self.heads.group_after[event.event_id] = group_after
        if new_head is not None:
            self.heads.heads[event.room_id] = new_head

    def _notify(self, event: Event, outcome: Outcome, ordering: int) -> None:
        try:
            self.notifier.on_event(event, outcome, ordering)
        except Exception:
            log.exception("notifying an event failed", extra={"event_id": event.event_id})
