"""The network work before an event can be decided, done without the room lock: the auth
events it cites that we lack, and the prev events it follows that we lack.

Missing auth events come from ``/event_auth`` (or ``/event/{id}``), bounded, stored as
outliers; what cannot be had leaves the event to be rejected at step 4. Missing
prev_events are fetched with a bounded ``get_missing_events`` (count, depth, time) and
each goes through the whole pipeline; when the gap remains the state at the missing event
is fetched (``/state_ids``, then ``/event/{id}`` for what we lack) instead of walking
further. All fetching goes through the one ``RemoteFetcher`` (budgets, per-peer backoff).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from homeserver.config import InboundConfig
from homeserver.events.errors import EventError
from homeserver.events.event import Event, StateKey
from homeserver.events.versions import RoomVersion
from homeserver.federation.pipeline.cache import EventCache
from homeserver.metrics import Metrics
from homeserver.rooms.checks.receipt import Dropped
from homeserver.rooms.fetcher import Budget, RemoteFetcher
from homeserver.storage.events import EventStore, Outcome

log = logging.getLogger(__name__)

# Runs one fetched PDU through the whole pipeline: (origin, PDU, room version, budget)
# -> its outcome's name, or None for a duplicate.
HandleFetched = Callable[[str, dict[str, Any], RoomVersion, Budget], Awaitable[str | None]]


class StateBefore:
    def __init__(
        self, config: InboundConfig, store: EventStore, cache: EventCache, fetcher: RemoteFetcher,
        metrics: Metrics, handle: HandleFetched,
    ) -> None:
        self._config = config
        self._store = store
        self._cache = cache
        self._fetcher = fetcher
        self._metrics = metrics
        self._handle = handle

    async def ensure_auth_events(self, origin: str, event: Event) -> None:
        """Fetch the auth events we lack, bounded; check them and store them as outliers."""
        if not event.auth_events:
            return
        have = await self._cache.get_events(event.auth_events)
        missing = [a for a in event.auth_events if a not in have]
        if not missing:
            return
        budget = self._fetcher.budget(self._config.missing_events_timeout)
        await self._fetcher.auth_events(
            origin, event, missing, self._config.missing_auth_events_limit, budget, count=True
        )

    async def prev_states(
        self, origin: str, event: Event, budget: Budget | None
    ) -> list[Mapping[StateKey, str]] | None:
        """None when every prev event is stored with state; otherwise fill the gap and
        return the states after the prev events (fetched where still missing). With a
        ``budget`` (this event was itself fetched to fill a gap) no further
        ``get_missing_events`` is made: what it lacks is fetched as state."""
        if not event.prev_events:
            return None
        if all(p in self._cache.state_after for p in event.prev_events):
            return None
        outcomes = await self._store.get_outcomes(event.prev_events)
        missing = [p for p in event.prev_events if outcomes.get(p) in (None, Outcome.OUTLIER)]
        if not missing:
            return None
        started = time.perf_counter()
        try:
            gap_filling = budget is None
            budget = budget or self._fetcher.budget(self._config.missing_events_timeout)
            if gap_filling:
                await self._get_missing_events(origin, event, budget)
                outcomes = await self._store.get_outcomes(event.prev_events)
                missing = [p for p in event.prev_events if outcomes.get(p) in (None, Outcome.OUTLIER)]
                if not missing:
                    return None
            # The gap remains: fetch the state at each missing prev instead of walking on.
            states: list[Mapping[StateKey, str]] = []
            for prev in event.prev_events:
                if prev in missing:
                    state = await self._state_after_remote(origin, event, prev, budget)
                    if state is None:
                        raise Dropped(f"prev event {prev} and the state at it could not be fetched")
                else:
                    state = await self._store.get_state_ids_after(prev)
                    if state is None:
                        raise Dropped(f"prev event {prev} has no state")
                states.append(state)
            return states
        finally:
            self._metrics.missing_events_seconds.observe(time.perf_counter() - started)

    async def _get_missing_events(self, origin: str, event: Event, budget: Budget) -> None:
        fetched = await self._fetcher.missing_events(
            origin, event.room_id,
            earliest=await self._store.get_forward_extremities(event.room_id),
            latest=[event.event_id],
            limit=self._config.missing_events_limit,
            min_depth=max(0, event.depth - self._config.missing_events_max_depth),
            budget=budget,
        )
        for pdu in fetched:
            try:
                # No further get_missing_events: what these lack is fetched as state.
                if await self._handle(origin, pdu, event.room_version, budget) is not None:
                    self._metrics.inbound_fetched_events.inc()
            except Dropped as e:
                log.info("fetched missing event dropped", extra={"origin": origin, "reason": str(e)})
            except EventError:
                continue

    async def _state_after_remote(
        self, origin: str, event: Event, prev: str, budget: Budget
    ) -> dict[StateKey, str] | None:
        """The state after ``prev`` from ``/state_ids`` at it, fetching what we lack."""
        pdu_ids = await self._fetcher.state_ids(
            origin, event.room_id, event.room_version, prev, budget, with_at=True, count=True
        )
        if pdu_ids is None:
            return None
        found = await self._cache.get_events([*pdu_ids, prev])
        state: dict[StateKey, str] = {}
        for event_id in pdu_ids:
            hit = found.get(event_id)
            if hit is None or not hit[0].is_state:
                return None  # the state is incomplete: the event cannot be placed
            state[hit[0].state_tuple] = event_id
        prev_hit = found.get(prev)
        if prev_hit is None:
            return None
        if prev_hit[0].is_state:
            state[prev_hit[0].state_tuple] = prev
        return state
