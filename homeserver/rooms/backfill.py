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
3. Every returned PDU gets the checks on receipt of the inbound path (the processor's
   ``check_event``: format, signatures through the key cache, content hash, redacted on
   a mismatch); only events that hang from our extremities (walking prev_events through
   the batch) are kept, events already held with state are skipped (repeating a backfill
   has no effect). The oldest events of the batch, whose prev events we lack, get the
   state before them from the same server (``/state_ids``, missing events fetched with
   ``/event``, checked and stored as outliers); the others get the state computed from
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

import asyncio
import heapq
import logging
import time
import weakref
from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from homeserver.config import BackfillConfig
from homeserver.events.auth import auth_types_for_event, check_auth_rules
from homeserver.events.errors import AuthError, EventError
from homeserver.events.event import Event, StateKey
from homeserver.events.hashes import compute_event_id
from homeserver.events.versions import RoomVersion
from homeserver.federation.inbound import Budget, Dropped, auth_events_rejection
from homeserver.metrics import Metrics
from homeserver.net.client import FederationClient, FederationRequestError
from homeserver.rooms.persist import EventPersister, Historical, PersistError
from homeserver.rooms.remote import RemoteMembership
from homeserver.storage.database import is_unique_violation
from homeserver.storage.events import EventStore, Outcome

log = logging.getLogger(__name__)

FED = "/_matrix/federation/v1"
CREATE: StateKey = ("m.room.create", "")
# The oldest timeline events whose prev events are looked at for backward extremities.
OLDEST_SCAN = 50
# Extremities sent in one request (the query string stays small).
MAX_V = 20
# Batch events whose state is fetched (/state_ids) per attempt; events below more roots
# wait for the next attempt.
MAX_ROOTS = 4
FETCH_CONCURRENCY = 8
# Events fetched at most for the state at one root, and for missing auth events.
MAX_STATE_EVENTS = 20_000
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
        client: FederationClient,
        remote: RemoteMembership,
        *,
        fetch_backoff_seconds: float = 60.0,
        metrics: Metrics | None = None,
    ) -> None:
        self.server_name = server_name
        self._config = config
        self._store = store
        self._db = store.db
        self._persister = persister
        self._client = client
        self._remote = remote
        self._processor = remote.processor
        self._backoff_seconds = fetch_backoff_seconds
        self._metrics = metrics
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._backoff: dict[str, float] = {}
        # room -> (the extremities an attempt got nothing for, until when not to retry)
        self._fruitless: OrderedDict[str, tuple[frozenset[str], float]] = OrderedDict()

    def _lock(self, room_id: str) -> asyncio.Lock:
        lock = self._locks.get(room_id)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[room_id] = lock
        return lock

    # ------------------------------------------------------------------ entry point

    async def backward_extremities(self, room_id: str) -> list[str]:
        """Prev events of our oldest timeline events that we do not hold with state."""
        rows = await self._db.fetchall(
            "SELECT event_id FROM events WHERE room_id = ? AND outcome <> 'outlier'"
            " ORDER BY stream_ordering LIMIT ?",
            room_id, OLDEST_SCAN,
        )
        ids = [r[0] for r in rows]
        if not ids:
            return []
        edges = await self._db.fetchall(
            f"SELECT prev_event_id FROM event_edges WHERE event_id IN ({','.join('?' * len(ids))})", *ids
        )
        prevs = list(dict.fromkeys(r[0] for r in edges))
        outcomes = await self._store.get_outcomes(prevs)
        return sorted(p for p in prevs if outcomes.get(p) in (None, Outcome.OUTLIER))

    async def backfill(self, room_id: str, timeout: float | None = None) -> BackfillResult:
        """Fetch, check and store one batch of the room's history before the oldest event
        we hold; bounded by ``timeout`` (at most ``backfill.timeout``) seconds of network."""
        if self._config.max_servers <= 0:
            return BackfillResult(0)
        async with self._lock(room_id):
            extremities = await self.backward_extremities(room_id)
            if not extremities:
                return BackfillResult(0)
            key = frozenset(extremities)
            now = time.monotonic()
            last = self._fruitless.get(room_id)
            if last is not None and last[0] == key and last[1] > now:
                return BackfillResult(0)
            version = await self._store.get_room_version(room_id)
            if version is None:
                return BackfillResult(0)
            seconds = self._config.timeout if timeout is None else min(timeout, self._config.timeout)
            budget = Budget(seconds)
            for server in await self.servers(room_id):
                if budget.left() <= 0:
                    break
                stored = await self._from_server(server, room_id, version, extremities, budget)
                if stored:
                    self._fruitless.pop(room_id, None)
                    log.info("backfilled", extra={"room_id": room_id, "server": server, "events": stored})
                    return BackfillResult(stored, server)
            self._fruitless[room_id] = (key, time.monotonic() + self._config.retry_seconds)
            self._fruitless.move_to_end(room_id)
            while len(self._fruitless) > FRUITLESS_ROOMS:
                self._fruitless.popitem(last=False)
            return BackfillResult(0)

    async def servers(self, room_id: str) -> list[str]:
        """Servers to ask, in order: the creator's, then by joined members (most first);
        not ourselves, not those backing off; at most ``backfill.max_servers``."""
        rows = await self._db.fetchall(
            "SELECT state_key FROM current_state WHERE room_id = ? AND type = 'm.room.member'"
            " AND membership = 'join'",
            room_id,
        )
        counts = Counter(r[0].split(":", 1)[1] for r in rows if isinstance(r[0], str) and ":" in r[0])
        counts.pop(self.server_name, None)
        creator_server: str | None = None
        create_id = await self._db.fetchval(
            "SELECT event_id FROM current_state WHERE room_id = ? AND type = 'm.room.create' AND state_key = ''",
            room_id,
        )
        if create_id is not None:
            create = await self._store.get_event(create_id)
            if create is not None:
                creator_server = create.event.sender_domain()
        ordered = sorted(counts, key=lambda s: (s != creator_server, -counts[s], s))
        return [s for s in ordered if not self._backing_off(s)][: self._config.max_servers]

    # ------------------------------------------------------------------ one server

    async def _from_server(
        self, server: str, room_id: str, version: RoomVersion, extremities: list[str], budget: Budget
    ) -> int:
        reply = await self._fetch(
            server, "backfill", f"{FED}/backfill/{_q(room_id)}", budget,
            query={"v": extremities[:MAX_V], "limit": str(self._config.limit)},
        )
        if not isinstance(reply, dict) or not isinstance(reply.get("pdus"), list):
            return 0
        pdus = [p for p in reply["pdus"][: self._config.limit] if isinstance(p, dict)]
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
        checked: dict[str, Event] = {}
        for pdu in pdus:
            if pdu.get("room_id", room_id) != room_id:
                continue
            try:
                event_id = compute_event_id(pdu, version)
                if event_id in checked:
                    continue
                event = await self._processor.check_event(pdu, version, event_id)
            except (Dropped, EventError, TypeError, ValueError, AttributeError) as e:
                log.info("backfilled event dropped", extra={"server": server, "reason": str(e)[:200]})
                continue
            if event.room_id == room_id:
                checked[event_id] = event
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
            await self._fetch_and_store(server, room_id, version, lacking[:MAX_AUTH_FETCH], budget)

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

    # ------------------------------------------------------------------ fetching

    def _backing_off(self, server: str) -> bool:
        until = self._backoff.get(server)
        return until is not None and until > time.monotonic()

    async def _fetch(
        self, server: str, kind: str, path: str, budget: Budget, query: dict[str, str | list[str]] | None = None
    ) -> Any | None:
        left = budget.left()
        if self._backing_off(server) or left <= 0:
            return None
        try:
            async with asyncio.timeout(left):
                reply = await self._client.request("GET", server, path, query=query, timeout=left)
        except (FederationRequestError, TimeoutError) as e:
            status = getattr(e, "status", None)
            if status is None or status >= 500 or status == 429:
                # Down, slow or overloaded: ask it nothing for a while. A 4xx is an answer.
                self._backoff[server] = time.monotonic() + self._backoff_seconds
            if self._metrics is not None:
                self._metrics.missing_events_fetches.labels(kind, "failed").inc()
            log.info("backfill fetch failed", extra={"server": server, "kind": kind, "error": str(e)[:300]})
            return None
        if self._metrics is not None:
            self._metrics.missing_events_fetches.labels(kind, "ok").inc()
        return reply

    async def _fetch_and_store(
        self, server: str, room_id: str, version: RoomVersion, event_ids: Sequence[str], budget: Budget
    ) -> None:
        """Fetch events with ``/event``, check them (steps 1-3 and their own auth events)
        and store those that pass as outliers."""
        sem = asyncio.Semaphore(FETCH_CONCURRENCY)

        async def one(event_id: str) -> Any:
            async with sem:
                reply = await self._fetch(server, "event", f"{FED}/event/{_q(event_id)}", budget)
            if isinstance(reply, dict) and isinstance(reply.get("pdus"), list) and reply["pdus"]:
                return reply["pdus"][0]
            return None

        got = await asyncio.gather(*(one(e) for e in event_ids))
        pdus = [p for p in got if isinstance(p, dict)]
        if not pdus:
            return
        good = await self._remote.verify_events(room_id, version, pdus)
        await self._persister.persist_outliers(list(good.values()))

    async def _remote_state_before(self, server: str, event: Event, budget: Budget) -> dict[StateKey, str] | None:
        """The state before ``event`` per ``server`` (``/state_ids``), fetching what we lack."""
        reply = await self._fetch(
            server, "state_ids", f"{FED}/state_ids/{_q(event.room_id)}", budget, query={"event_id": event.event_id}
        )
        if not isinstance(reply, dict):
            return None
        pdu_ids, chain_ids = reply.get("pdu_ids"), reply.get("auth_chain_ids")
        if not isinstance(pdu_ids, list) or not isinstance(chain_ids, list):
            return None
        state_ids = [i for i in pdu_ids if isinstance(i, str)]
        wanted = list(dict.fromkeys(i for i in [*chain_ids, *state_ids] if isinstance(i, str)))
        if len(wanted) > MAX_STATE_EVENTS:
            return None
        have = await self._store.have_events(wanted)
        lacking = [i for i in wanted if i not in have]
        if lacking:
            await self._fetch_and_store(server, event.room_id, event.room_version, lacking, budget)
        found = await self._store.get_events(state_ids)
        state: dict[StateKey, str] = {}
        for event_id in state_ids:
            hit = found.get(event_id)
            if hit is None or not hit.event.is_state or hit.event.room_id != event.room_id:
                return None  # incomplete: the events below this root wait for a later attempt
            state[hit.event.state_tuple] = event_id
        return state


def _q(value: str) -> str:
    return quote(value, safe="")


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
