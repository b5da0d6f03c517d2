"""The one fetcher of room events from other servers: ``/event``, ``/event_auth``,
``/state_ids``, ``get_missing_events`` and ``/backfill``, each bounded by a ``Budget``.

A peer whose fetch failed (down, slow, 5xx, 429) is not asked again for
``backoff_seconds``: a dead peer costs at most one budget, not one per event, whoever
asks (the inbound pipeline, a join, a backfill). Fetched events are checked (steps 1-3
through the one ``PduChecker``, then against their own auth events) and those that pass
are stored as outliers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from homeserver.events.event import Event
from homeserver.events.versions import RoomVersion
from homeserver.metrics import Metrics
from homeserver.net.client import FederationClient, FederationRequestError
from homeserver.rooms.checks.auth import authorize_batch, cited_elsewhere
from homeserver.rooms.checks.receipt import PduChecker
from homeserver.rooms.persist import EventPersister
from homeserver.storage.events import EventStore, Outcome
from homeserver.util.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)

FED = "/_matrix/federation/v1"
FETCH_CONCURRENCY = 8
# Events fetched at most for the state at one event.
MAX_STATE_EVENTS = 20_000


def _q(value: str) -> str:
    return quote(value, safe="")


def depth_of(pdu: Mapping[str, Any]) -> int:
    depth = pdu.get("depth")
    return depth if isinstance(depth, int) else 0


class Budget:
    """The time left for one bounded piece of network work (filling a gap, a backfill)."""

    def __init__(self, seconds: float, clock: Clock = SYSTEM_CLOCK) -> None:
        self._clock = clock
        self.deadline = clock.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self.deadline - self._clock.monotonic())


class RemoteFetcher:
    def __init__(
        self,
        client: FederationClient,
        checker: PduChecker,
        store: EventStore,
        persister: EventPersister,
        metrics: Metrics,
        *,
        backoff_seconds: float = 60.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._client = client
        self.checker = checker
        self._store = store
        self._persister = persister
        self._metrics = metrics
        self._backoff_seconds = backoff_seconds
        self._clock = clock
        self._backoff: dict[str, float] = {}

    def budget(self, seconds: float) -> Budget:
        return Budget(seconds, self._clock)

    # ------------------------------------------------------------------ requests

    def backing_off(self, server: str) -> bool:
        until = self._backoff.get(server)
        return until is not None and until > self._clock.monotonic()

    def _failed(self, server: str, kind: str, error: Exception) -> None:
        status = getattr(error, "status", None)
        if status is None or status >= 500 or status == 429:
            # The peer is down, slow or overloaded: ask it nothing for a while, so it costs
            # one budget, not one per event. A 4xx answer (say, a 403 for an event it will
            # not show us) is an answer from a healthy peer, and says nothing of others.
            self._backoff[server] = self._clock.monotonic() + self._backoff_seconds
        self._metrics.missing_events_fetches.labels(kind, "failed").inc()
        log.info("fetch from a peer failed", extra={"server": server, "kind": kind, "error": str(error)[:300]})

    async def fetch_json(self, server: str, kind: str, method: str, path: str, budget: Budget,
                         **kw: Any) -> Any | None:
        """The peer's reply, or None when it failed, is backing off or the budget is spent."""
        if self.backing_off(server) or budget.left() <= 0:
            return None
        try:
            async with asyncio.timeout(budget.left()):
                # PDUs: floats as written (rooms 1-5 hash them so; events/canonical.py).
                reply = await self._client.request(method, server, path, timeout=budget.left(),
                                                   exact_numbers=True, **kw)
        except (FederationRequestError, TimeoutError) as e:
            self._failed(server, kind, e)
            return None
        self._metrics.missing_events_fetches.labels(kind, "ok").inc()
        return reply

    async def fetch_events(self, server: str, event_ids: Sequence[str], budget: Budget) -> list[dict[str, Any]]:
        """``/event/{id}`` for each of ``event_ids``, a few at a time: the PDUs had."""
        sem = asyncio.Semaphore(FETCH_CONCURRENCY)

        async def one(event_id: str) -> Any:
            async with sem:
                reply = await self.fetch_json(server, "event", "GET", f"{FED}/event/{_q(event_id)}", budget)
            if isinstance(reply, dict) and isinstance(reply.get("pdus"), list) and reply["pdus"]:
                return reply["pdus"][0]
            return None

        got = await asyncio.gather(*(one(e) for e in event_ids))
        return [p for p in got if isinstance(p, dict)]

    async def missing_events(
        self, server: str, room_id: str, *, earliest: list[str], latest: list[str], limit: int, min_depth: int,
        budget: Budget,
    ) -> list[dict[str, Any]]:
        """``get_missing_events``: the room's PDUs answered, oldest (lowest depth) first."""
        reply = await self.fetch_json(
            server, "get_missing_events", "POST", f"{FED}/get_missing_events/{_q(room_id)}", budget,
            content={"limit": limit, "min_depth": min_depth, "earliest_events": earliest, "latest_events": latest},
        )
        if not isinstance(reply, dict) or not isinstance(reply.get("events"), list):
            return []
        fetched = [p for p in reply["events"][:limit] if isinstance(p, dict) and p.get("room_id") == room_id]
        fetched.sort(key=depth_of)
        return fetched

    async def backfill(
        self, server: str, room_id: str, extremities: list[str], limit: int, budget: Budget
    ) -> list[dict[str, Any]]:
        """``/backfill`` from ``extremities``: the PDUs answered (at most ``limit``)."""
        reply = await self.fetch_json(
            server, "backfill", "GET", f"{FED}/backfill/{_q(room_id)}", budget,
            query={"v": extremities, "limit": str(limit)},
        )
        if not isinstance(reply, dict) or not isinstance(reply.get("pdus"), list):
            return []
        return [p for p in reply["pdus"][:limit] if isinstance(p, dict)]

    # ------------------------------------------------------------------ outliers

    async def verify_events(self, room_id: str, version: RoomVersion, pdus: Sequence[Any]) -> dict[str, Event]:
        """The events of ``pdus`` that pass the checks on receipt (format, signatures,
        hashes) and the auth rules against their own auth events (in the batch, or held by
        us and not rejected); the others are left out."""
        checked = await self.checker.check_all(room_id, version, pdus)
        wanted = cited_elsewhere(checked, room_id)
        known = {eid: s.event for eid, s in (await self._store.get_events(wanted)).items()
                 if s.outcome is not Outcome.REJECTED}
        good, bad, pending = authorize_batch(checked, known, room_id)
        if bad or pending:
            log.info("remote room events left out", extra={
                "room_id": room_id, "failed_auth": len(bad), "undecided": len(pending)})
        return good

    async def store_outliers(
        self, room_id: str, version: RoomVersion, pdus: Sequence[Any], *, count: bool = False
    ) -> set[str]:
        """Check fetched events and store those that pass as outliers; the IDs stored now
        (``count``: they count as fetched events in the metrics)."""
        if not pdus:
            return set()
        good = await self.verify_events(room_id, version, pdus)
        have = await self._store.have_events(good)
        new = [e for e in good.values() if e.event_id not in have]
        await self._persister.persist_outliers(new)
        if count:
            self._metrics.inbound_fetched_events.inc(len(new))
        return {e.event_id for e in new}

    async def fetch_outliers(
        self, server: str, room_id: str, version: RoomVersion, event_ids: Sequence[str], budget: Budget,
        *, count: bool = False,
    ) -> set[str]:
        """Fetch events with ``/event`` and store those that pass as outliers."""
        pdus = await self.fetch_events(server, event_ids, budget)
        return await self.store_outliers(room_id, version, pdus, count=count)

    async def auth_events(
        self, server: str, event: Event, missing: Sequence[str], limit: int, budget: Budget, *, count: bool = False
    ) -> set[str]:
        """Fetch the auth events of ``event`` we lack (``missing``): its auth chain from
        ``/event_auth``, else each with ``/event/{id}``, at most ``limit``; check them and
        store them as outliers."""
        reply = await self.fetch_json(
            server, "event_auth", "GET", f"{FED}/event_auth/{_q(event.room_id)}/{_q(event.event_id)}", budget
        )
        if isinstance(reply, dict) and isinstance(reply.get("auth_chain"), list):
            pdus: list[Any] = reply["auth_chain"][:limit]
        else:
            pdus = await self.fetch_events(server, missing[:limit], budget)
        return await self.store_outliers(event.room_id, event.room_version, pdus, count=count)

    async def state_ids(
        self, server: str, room_id: str, version: RoomVersion, at: str, budget: Budget, *,
        with_at: bool = False, count: bool = False,
    ) -> list[str] | None:
        """The state event IDs ``server`` answers for ``/state_ids`` at ``at`` (the state
        before it), once the events of it and of its auth chain that we lack (``with_at``:
        and ``at`` itself) are fetched and stored as outliers; None when not answered."""
        reply = await self.fetch_json(server, "state_ids", "GET", f"{FED}/state_ids/{_q(room_id)}", budget,
                                      query={"event_id": at})
        if not isinstance(reply, dict):
            return None
        pdu_ids, chain_ids = reply.get("pdu_ids"), reply.get("auth_chain_ids")
        if not isinstance(pdu_ids, list) or not isinstance(chain_ids, list):
            return None
        state_ids = [i for i in pdu_ids if isinstance(i, str)]
        wanted = list(dict.fromkeys(
            i for i in [*chain_ids, *state_ids, *([at] if with_at else [])] if isinstance(i, str)))
        if len(wanted) > MAX_STATE_EVENTS:
            return None
        have = await self._store.have_events(wanted)
        lacking = [i for i in wanted if i not in have]
        if lacking:
            await self.fetch_outliers(server, room_id, version, lacking, budget, count=count)
        return state_ids
