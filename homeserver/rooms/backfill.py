"""Backfill over federation: a room's history from before we joined it.

A server that joins a room over federation holds the state and auth chain ``send_join``
returned, and its own join: its users could not page ``/messages`` back past the join.
When a backwards ``/messages`` page reaches the oldest event we hold in a room's timeline,
the client API calls ``Backfiller.backfill``:

1. The room's backward extremities: the prev events of our oldest timeline events that we
   do not hold with state (after a join over federation, the join's prev events). None:
   we hold the room from its create event, nothing to do.
2. ``GET /_matrix/federation/v1/backfill/{roomId}?v=<extremities>&limit=N`` to one server
   of the room at a time: the room creator's server first, then the servers with the most
   joined members; at most ``backfill.max_servers`` servers and ``backfill.timeout``
   seconds in all (every request is bounded by what is left). A server that fails (down,
   timing out, 5xx) is not asked again for ``inbound.fetch_backoff_seconds``; a room
   whose attempt brought nothing is not tried again for ``backfill.retry_seconds``. So a
   dead peer costs a /messages request at most the timeout, once, and /messages answers
   with what we hold.
3. Every returned PDU gets the checks on receipt of the inbound path (the one
   ``PduChecker``: format, signatures through the key cache, content hash, redacted on
   a mismatch); only events that hang from our extremities (walking prev_events through
   the batch) are kept, events already held with state are skipped (repeating a backfill
   has no effect). The oldest events of the batch, whose prev events we lack, get the
   state before them from the same server (``/state_ids`` through the one
   ``RemoteFetcher``: missing events fetched with ``/event``, checked and stored as
   outliers); the others get the state computed from
   their prev events. Auth events we lack are fetched the same way. Then auth against the
   event's own auth events and against the state before it (else rejected); no
   soft-failure check: this is history, not a new event.
4. ``EventPersister.persist_historical`` stores them under stream orderings below every
   other (negative, decreasing), so /messages tokens keep working and pages continue into
   them; the forward extremities and the current state are untouched and /sync does not
   hear of them. Nothing backfilled is ever queued for sending (the outbound sender takes
   only events built here).
"""

from __future__ import annotations

import heapq
import logging
from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from homeserver.config import BackfillConfig
from homeserver.events.auth import auth_types_for_event, check_auth_rules
from homeserver.events.errors import AuthError
from homeserver.events.event import Event, StateKey
from homeserver.events.versions import RoomVersion
from homeserver.rooms.checks.auth import CREATE, auth_events_rejection
from homeserver.rooms.fetcher import Budget, RemoteFetcher
from homeserver.rooms.persist import EventPersister, Historical, PersistError
from homeserver.storage.backfill import BackfillStore
from homeserver.storage.database import is_unique_violation
from homeserver.storage.events import EventStore, Outcome
from homeserver.util.clock import SYSTEM_CLOCK, Clock
from homeserver.util.locks import KeyedLock

log = logging.getLogger(__name__)

# The oldest timeline events whose prev events are looked at for backward extremities.
OLDEST_SCAN = 50
# Extremities sent in one request (the query string stays small).
MAX_V = 20
# Batch events whose state is fetched (/state_ids) per attempt; events below more roots
# wait for the next attempt.
MAX_ROOTS = 4
# Missing auth events fetched at most per attempt.
MAX_AUTH_FETCH = 200
FRUITLESS_ROOMS = 10_000


@dataclass(frozen=True, slots=True)
class BackfillResult:
    stored: int  # events newly stored (0: nothing more could be had now)
    server: str | None = None  # the server they came from


class Backfiller:
    def __init__(
        self,
        server_name: str,
        config: BackfillConfig,
        store: EventStore,
        persister: EventPersister,
        fetcher: RemoteFetcher,
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.server_name = server_name
        self._config = config
        self._store = store
        self._reads = BackfillStore(store.db)
        self._persister = persister
        self._fetcher = fetcher
        self._checker = fetcher.checker
        self._clock = clock
        self._locks: KeyedLock[str] = KeyedLock()
        # room -> (the extremities an attempt got nothing for, until when not to retry)
        self._fruitless: OrderedDict[str, tuple[frozenset[str], float]] = OrderedDict()

    # ------------------------------------------------------------------ entry point

    async def backward_extremities(self, room_id: str) -> list[str]:
        """Prev events of our oldest timeline events that we do not hold with state."""
        prevs = await self._reads.oldest_prev_events(room_id, OLDEST_SCAN)
        if not prevs:
            return []
        outcomes = await self._store.get_outcomes(prevs)
        return sorted(p for p in prevs if outcomes.get(p) in (None, Outcome.OUTLIER))

    async def backfill(self, room_id: str, timeout: float | None = None) -> BackfillResult:
        """Fetch, check and store one batch of the room's history before the oldest event
        we hold; bounded by ``timeout`` (at most ``backfill.timeout``) seconds of network."""
        if self._config.max_servers <= 0:
            return BackfillResult(0)
        async with self._locks(room_id):
            extremities = await self.backward_extremities(room_id)
            if not extremities:
                return BackfillResult(0)
            key = frozenset(extremities)
            now = self._clock.monotonic()
            last = self._fruitless.get(room_id)
            if last is not None and last[0] == key and last[1] > now:
                return BackfillResult(0)
            version = await self._store.get_room_version(room_id)
            if version is None:
                return BackfillResult(0)
            seconds = self._config.timeout if timeout is None else min(timeout, self._config.timeout)
            budget = self._fetcher.budget(seconds)
            for server in await self.servers(room_id):
                if budget.left() <= 0:
                    break
                stored = await self._from_server(server, room_id, version, extremities, budget)
                if stored:
                    self._fruitless.pop(room_id, None)
                    log.info("backfilled", extra={"room_id": room_id, "server": server, "events": stored})
                    return BackfillResult(stored, server)
            self._fruitless[room_id] = (key, self._clock.monotonic() + self._config.retry_seconds)
            self._fruitless.move_to_end(room_id)
            while len(self._fruitless) > FRUITLESS_ROOMS:
                self._fruitless.popitem(last=False)
            return BackfillResult(0)

    async def servers(self, room_id: str) -> list[str]:
        """Servers to ask, in order: the creator's, then by joined members (most first);
        not ourselves, not those backing off; at most ``backfill.max_servers``."""
        members = await self._store.joined_members(room_id)
        counts = Counter(m.split(":", 1)[1] for m in members if isinstance(m, str) and ":" in m)
        counts.pop(self.server_name, None)
        creator_server: str | None = None
        create_id = await self._reads.current_create_event_id(room_id)
        if create_id is not None:
            create = await self._store.get_event(create_id)
            if create is not None:
                creator_server = create.event.sender_domain()
        ordered = sorted(counts, key=lambda s: (s != creator_server, -counts[s], s))
        return [s for s in ordered if not self._fetcher.backing_off(s)][: self._config.max_servers]

    # ------------------------------------------------------------------ one server

    async def _from_server(
        self, server: str, room_id: str, version: RoomVersion, extremities: list[str], budget: Budget
    ) -> int:
        pdus = await self._fetcher.backfill(server, room_id, extremities[:MAX_V], self._config.limit, budget)
        if not pdus:
            return 0
        items = await self._plan(server, room_id, version, extremities, pdus, budget)
        if not items:
            return 0
        for attempt in range(2):
            try:
                async with self._persister.room_lock(room_id):
                    stored = await self._persister.persist_historical(items)
                return len(stored)
            except Exception as e:
                # Another path stored one of them meanwhile (PostgreSQL): look again, once.
                if attempt or not is_unique_violation(e):
                    raise
        return 0

    async def _plan(
        self, server: str, room_id: str, version: RoomVersion, extremities: list[str],
        pdus: list[dict[str, Any]], budget: Budget,
    ) -> list[Historical]:
        """The batch's events to store, oldest first, with their outcomes and states."""
        # Steps 1-3 of the checks on receipt: format, signatures, content hash.
        checked = await self._checker.check_all(room_id, version, pdus)
        if not checked:
            return []
        outcomes = await self._store.get_outcomes(
            [*checked, *(p for e in checked.values() for p in e.prev_events)]
        )

        def held(event_id: str) -> bool:
            return outcomes.get(event_id) not in (None, Outcome.OUTLIER)

        # Only what hangs from our extremities, and only what we do not hold already.
        kept: dict[str, Event] = {}
        frontier = list(extremities)
        while frontier:
            event_id = frontier.pop()
            if event_id in kept or event_id not in checked or held(event_id):
                continue
            kept[event_id] = checked[event_id]
            frontier.extend(checked[event_id].prev_events)
        if not kept:
            return []
        order = _topological(kept)
        # Roots: batch events with a prev event that is neither in the batch nor held with
        # state. The state before them comes from the server.
        roots = [e for e in order if any(p not in kept and not held(p) for p in e.prev_events)]
        root_states: dict[str, dict[StateKey, str]] = {}
        for root in roots[:MAX_ROOTS]:
            state = await self._remote_state_before(server, root, budget)
            if state is not None:
                root_states[root.event_id] = state
        # Auth events that we hold nowhere (say, the join of someone who left before we came).
        cited = {a for e in kept.values() for a in e.auth_events if a not in kept}
        lacking = sorted(cited - await self._store.have_events(cited))
        if lacking:
            await self._fetcher.fetch_outliers(server, room_id, version, lacking[:MAX_AUTH_FETCH], budget)

        decided: dict[str, tuple[Event, Outcome]] = {}
        after: dict[str, Mapping[StateKey, str]] = {}
        items: list[Historical] = []
        for event in order:
            state_before: dict[StateKey, str]
            if event.type == "m.room.create" and event.state_key == "" and not event.prev_events:
                state_before = {}
            elif event.event_id in root_states:
                state_before = root_states[event.event_id]
            else:
                states: list[Mapping[StateKey, str]] = []
                for prev in event.prev_events:
                    if prev in after:
                        states.append(after[prev])
                    elif held(prev):
                        stored_state = await self._store.get_state_ids_after(prev)
                        if stored_state is not None:
                            states.append(stored_state)
                if not states or len(states) != len(set(event.prev_events)):
                    continue  # the state before it cannot be known: left for a later attempt
                try:
                    state_before = await self._persister.resolve(version, states, kept)
                except PersistError:
                    continue
            outcome, reason = await self._auth(event, state_before, decided)
            decided[event.event_id] = (event, outcome)
            state_after = dict(state_before)
            if event.is_state and outcome is not Outcome.REJECTED:
                state_after[event.state_tuple] = event.event_id
            after[event.event_id] = state_after
            items.append(Historical(event, outcome, state_before, reason))
            if outcome is Outcome.REJECTED:
                log.info("backfilled event rejected", extra={"event_id": event.event_id, "reason": reason})
        return items

    # ------------------------------------------------------------------ auth (steps 4, 5)

    async def _auth(
        self, event: Event, state_before: Mapping[StateKey, str], decided: Mapping[str, tuple[Event, Outcome]]
    ) -> tuple[Outcome, str | None]:
        """Auth against the event's own auth events, then against the state before it."""
        if event.type == "m.room.create" and event.state_key == "":
            try:
                check_auth_rules(event, {})
            except AuthError as e:
                return Outcome.REJECTED, str(e)
            return Outcome.ACCEPTED, None
        wanted = auth_types_for_event(event) | {CREATE}
        state_ids = {k: state_before[k] for k in wanted if k in state_before}
        create_id = "$" + event.room_id[1:] if event.room_version.room_id_is_create_hash else None
        lookup = await self._lookup(
            [*event.auth_events, *state_ids.values(), *([create_id] if create_id else [])], decided
        )
        create = lookup[create_id][0] if create_id is not None and create_id in lookup else None
        reason = auth_events_rejection(event, lookup, create)
        if reason is not None:
            return Outcome.REJECTED, reason
        before = {k: lookup[i][0] for k, i in state_ids.items() if i in lookup}
        if CREATE not in before and create is not None:
            before[CREATE] = create
        try:
            check_auth_rules(event, before)
        except AuthError as e:
            return Outcome.REJECTED, str(e)
        return Outcome.ACCEPTED, None

    async def _lookup(
        self, event_ids: Iterable[str], decided: Mapping[str, tuple[Event, Outcome]]
    ) -> dict[str, tuple[Event, Outcome]]:
        out: dict[str, tuple[Event, Outcome]] = {}
        wanted: list[str] = []
        for event_id in dict.fromkeys(event_ids):
            hit = decided.get(event_id)
            if hit is not None:
                out[event_id] = hit
            else:
                wanted.append(event_id)
        for event_id, stored in (await self._store.get_events(wanted)).items():
            out[event_id] = (stored.event, stored.outcome)
        return out

    async def _remote_state_before(self, server: str, event: Event, budget: Budget) -> dict[StateKey, str] | None:
        """The state before ``event`` per ``server`` (``/state_ids``), fetching what we lack."""
        state_ids = await self._fetcher.state_ids(server, event.room_id, event.room_version, event.event_id, budget)
        if state_ids is None:
            return None
        found = await self._store.get_events(state_ids)
        state: dict[StateKey, str] = {}
        for event_id in state_ids:
            hit = found.get(event_id)
            if hit is None or not hit.event.is_state or hit.event.room_id != event.room_id:
                return None  # incomplete: the events below this root wait for a later attempt
            state[hit.event.state_tuple] = event_id
        return state


def _topological(events: Mapping[str, Event]) -> list[Event]:
    """``events`` oldest first: every event after its prev events within the set (ties by
    depth, then event ID)."""
    waiting: dict[str, int] = {}
    children: dict[str, list[str]] = {}
    for event in events.values():
        prevs = {p for p in event.prev_events if p in events}
        waiting[event.event_id] = len(prevs)
        for p in prevs:
            children.setdefault(p, []).append(event.event_id)
    ready = [(events[e].depth, e) for e, n in waiting.items() if n == 0]
    heapq.heapify(ready)
    out: list[Event] = []
    while ready:
        _, event_id = heapq.heappop(ready)
        out.append(events[event_id])
        for child in children.get(event_id, ()):
            waiting[child] -= 1
            if waiting[child] == 0:
                heapq.heappush(ready, (events[child].depth, child))
    return out
