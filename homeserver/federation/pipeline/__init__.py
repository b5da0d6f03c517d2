"""The inbound worker's per-entry pipeline: each PDU goes through the spec's "Checks
performed on receipt of a PDU" in order, one step per module:

1.-3. format, signatures, content hash: ``rooms/checks/receipt.py`` (the one checker;
      dropped, dropped, used redacted), run ahead or in the helper processes;
      ``out_of_band.py`` for an event of a room we hold no state of;
 -    the auth events and prev events we lack, fetched: ``state.py``;
4.-6. auth against its auth events, the state before it (else rejected) and the current
      state (else soft-failed): ``decide.py``, under the room lock; then persisted.
Rejected and soft-failed events are stored as such and never enter the current state.
An event already stored is skipped with one look-up. EDUs go to ``edus.py``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from homeserver.config import InboundConfig
from homeserver.events.event import StateKey
from homeserver.events.hashes import compute_event_id
from homeserver.events.versions import RoomVersion, get_room_version
from homeserver.federation.pipeline.cache import EventCache
from homeserver.federation.pipeline.decide import Decider
from homeserver.federation.pipeline.edus import EduHandler
from homeserver.federation.pipeline.out_of_band import OutOfBand
from homeserver.federation.pipeline.state import StateBefore
from homeserver.metrics import Metrics
from homeserver.notifier import Notifier
from homeserver.rooms.acl import AclChecker
from homeserver.rooms.checks.receipt import Dropped
from homeserver.rooms.fetcher import Budget, RemoteFetcher
from homeserver.rooms.persist import EventPersister
from homeserver.rooms.store import RoomMembershipStore
from homeserver.storage.events import EventStore, Outcome
from homeserver.storage.inbox import InboxEntry
from homeserver.storage.receipts import ReceiptStore
from homeserver.storage.timeline import TimelineStore
from homeserver.storage.to_device import ToDeviceStore
from homeserver.util.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)

__all__ = ["Dropped", "InboundProcessor"]

_DROP_REASONS = {"format": "malformed", "signature": "bad_signature"}


class InboundProcessor:
    """Processes one inbox entry at a time per room (the worker guarantees the ordering)."""

    def __init__(
        self,
        config: InboundConfig,
        store: EventStore,
        persister: EventPersister,
        fetcher: RemoteFetcher,
        metrics: Metrics,
        memberships: RoomMembershipStore,
        acl: AclChecker,
        *,
        clock: Clock = SYSTEM_CLOCK,
        notifier: Notifier | None = None,
        to_device: ToDeviceStore | None = None,
    ) -> None:
        self._store = store
        self._persister = persister
        self._checker = fetcher.checker
        self._metrics = metrics
        self._cache = EventCache(store, config.cache_size)
        self._decider = Decider(store, persister, self._cache)
        self._state = StateBefore(
            config, store, self._cache, fetcher, metrics,
            lambda origin, pdu, version, budget: self.handle_pdu(origin, pdu, version, budget=budget),
        )
        notifier = notifier if notifier is not None else persister.notifier
        self._out_of_band = OutOfBand(memberships, notifier)
        self._edus = EduHandler(
            TimelineStore(store.db, store), ReceiptStore(store.db), acl, metrics, clock, notifier,
            to_device if to_device is not None else ToDeviceStore(store.db),
        )
        # Deferred writes failed: what the caches say was stored may not be.
        store.db.on_deferred_failure(self._cache.forget_all)

    # ------------------------------------------------------------------ ahead of the entries

    async def prefetch(self, entries: Sequence[InboxEntry]) -> None:
        """Look up, in one query, whether the claimed PDUs are already stored; start the
        checks of a large batch's new ones in the helper processes."""
        ids = [e.event_id for e in entries if e.kind == "pdu" and e.event_id]
        if not ids:
            return
        # Events whose writes are deferred are not seen: the cache of events knows them.
        found = await self._store.get_outcomes(ids, settled=False)
        self._cache.prefetch_found(ids, found)
        fresh = [e for e in entries if e.kind == "pdu" and e.event_id and e.room_version
                 and found.get(e.event_id) in (None, Outcome.OUTLIER) and e.event_id not in self._cache.events]
        self._checker.check_in_helpers(fresh)

    def check_ahead(self, entry: InboxEntry) -> None:
        """Start steps 1-3 (they need no room state) of the room's next entry, so they run
        while this entry waits on the database."""
        if entry.kind != "pdu" or not entry.event_id or entry.room_version is None:
            return
        if entry.event_id in self._cache.events or self._checker.pending(entry.event_id):
            return
        self._checker.check_ahead(entry.body, get_room_version(entry.room_version), entry.event_id)

    def close(self) -> None:
        """Stop the check helpers (the worker calls this when it stops)."""
        self._checker.close()

    def handle_edus(self, edu_type: str, handler: Callable[[str, Mapping[str, Any]], Awaitable[None]]) -> None:
        """Have ``handler(origin, content)`` take in EDUs of ``edu_type`` (app.py wires the
        device-list EDUs to e2e/service.py)."""
        self._edus.handlers[edu_type] = handler

    # ------------------------------------------------------------------ entry point

    async def __call__(self, entry: InboxEntry) -> asyncio.Future[None] | None:
        """Process one entry. A future returned resolves when what it stored is committed
        (the worker deletes the entry then); None: done already."""
        if entry.kind == "edu":
            await self._edus(entry.origin, entry.body)
            return None
        assert entry.room_version is not None
        version = get_room_version(entry.room_version)
        commits: list[asyncio.Future[None]] = []
        try:
            if entry.room_id is not None and await self._store.get_room_version(entry.room_id) is None:
                assert entry.event_id is not None
                # 1-3. Format, signatures, hashes; then what it may do without the room.
                event = await self._checker.checked(entry.body, version, entry.event_id)
                outcome: str | None = await self._out_of_band(entry.origin, entry.room_id, event)
            else:
                outcome = await self.handle_pdu(entry.origin, entry.body, version, entry.event_id, commits=commits)
        except Dropped as e:
            self._metrics.events_processed.labels("dropped").inc()
            reason = str(e).split(":", 1)[0]
            self._metrics.inbound_pdus_dropped.labels(entry.origin, _DROP_REASONS.get(reason, "unplaceable")).inc()
            log.info("inbound event dropped", extra={"origin": entry.origin, "event_id": entry.event_id,
                                                     "reason": str(e)})
            return None
        self._metrics.events_processed.labels(outcome or "duplicate").inc()
        return commits[0] if commits else None

    async def handle_pdu(
        self, origin: str, pdu: dict[str, Any], version: RoomVersion, event_id: str | None = None,
        *, budget: Budget | None = None, commits: list[asyncio.Future[None]] | None = None,
    ) -> str | None:
        """Run the checks and persist; return the outcome's name, or None for a duplicate.
        With ``commits``, the write may be deferred: its commit's future is appended."""
        event_id = event_id or compute_event_id(pdu, version)
        if event_id in self._cache.events:
            return None
        # An outlier (stored earlier as another event's auth or state) is processed now.
        if event_id in self._cache.prefetched:
            stored = self._cache.prefetched.pop(event_id)
        else:
            stored = (await self._store.get_outcomes([event_id])).get(event_id)
        if stored is not None and stored is not Outcome.OUTLIER:
            return None
        # 1-3. Format, signatures, content hash.
        event = await self._checker.checked(pdu, version, event_id)
        # Network work first, without the room lock: missing auth events, missing prevs.
        await self._state.ensure_auth_events(origin, event)
        prev_states = await self._state.prev_states(origin, event, budget)
        async with self._persister.room_lock(event.room_id):
            generation = self._persister.generation
            # 4-6. Auth against its auth events, the state before it, the current state.
            outcome, reason, state_before = await self._decider.decide(event, prev_states)
            _, commit = await self._persister.persist_event_deferred(
                event, outcome, state_before, rejection_reason=reason, stored_outcome=stored,
                defer=commits is not None, generation=generation,
            )
        if commit is not None and commits is not None:
            commits.append(commit)
        self._cache.remember(event, outcome)
        after: Mapping[StateKey, str] = state_before
        if event.is_state and outcome is not Outcome.REJECTED:
            after = {**state_before, event.state_tuple: event.event_id}
        self._cache.state_after[event.event_id] = after
        if outcome is not Outcome.ACCEPTED:
            log.info("inbound event not accepted", extra={
                "origin": origin, "event_id": event.event_id, "outcome": outcome.value, "reason": reason})
        return outcome.value
