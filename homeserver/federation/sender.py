"""The outbound sender: the one way PDUs and EDUs leave this server.

Guarantees:

* Only our own events leave, and the joins, leaves and knocks we accept as the resident
  server through our own handshake. ``OutboundSender.enqueue_event`` is the single entry
  point for PDUs. With ``Accepted.LOCAL`` (every caller but one) it refuses any event whose
  ``sender`` is not a user of this server. With ``Accepted.HANDSHAKE``, which only
  ``federation/rooms_api.py``'s ``send_join``/``send_leave``/``send_knock`` pass (never
  derived from the event), it takes an ``m.room.member`` join, leave or knock whose sender
  is a user of the handshake's origin acting for themself, and queues it for the room's
  other servers but never for that origin (counted in
  ``hs_outbound_handshake_announcements{membership}``); the resident announces it because
  nobody else will, once, since an event already stored is not persisted (nor queued)
  again. Every refusal is logged once per event and counted in
  ``hs_outbound_refused_relays``: what we received through ``/send``, backfill,
  ``get_missing_events``, state fetches or invites is never offered with ``HANDSHAKE``,
  and offered as ``LOCAL`` it is refused. ``enqueue_edu`` accepts only typing, receipts,
  presence and device EDUs about our own users.
* Durable per-destination queues: an event is queued inside the database transaction that
  persists it (the persister's ``in_transaction`` hook), so a crash or restart loses
  nothing; its destinations are woken by that transaction's after-commit callback. Each
  destination has at most one transaction in flight, of at most 50 PDUs and 100 EDUs,
  oldest first; a transaction that failed is retried with the same txnId and the
  same content, and txnIds never repeat for a destination.
* A failing destination backs off exponentially with jitter; the retry state lives in the
  database. Any authenticated request from it (``notify_destination_up``) retries it at
  once. Past ``outbound.dead_after_days`` of failures it is not tried at all and its queue
  shrinks to a catch-up marker: our newest event of each room, from which the receiver
  fetches the gap with /get_missing_events. Short of that, a recovering destination gets its
  whole queue replayed in order (receivers such as Synapse fetch only a few missing events
  and show the rest as a gap), read from the database one transaction at a time; only a
  queue past ``outbound.catch_up_max_pdus`` PDUs, or whose oldest PDU is older than
  ``outbound.catch_up_max_age_hours``, is caught up the same way.
* A slow or dead destination costs one worker task and at most one pooled connection for
  /send; it never delays any other destination.

This module is the entry point; the routing rules are in ``destinations``, one
destination's worker in ``destination_queue``, the statements in ``storage/outbox``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from homeserver.config import OutboundConfig
from homeserver.events.event import Event, StateKey
from homeserver.federation.destination_queue import DestinationQueue
from homeserver.federation.destinations import (
    MemberState,
    destinations_for_event,
    edu_is_ours,
    handshake_refusal,
    is_local_user,
    other_servers,
    to_device_target,
)
from homeserver.metrics import Metrics
from homeserver.net.client import FederationClient
from homeserver.rooms.outbox import Accepted
from homeserver.storage.database import Connection, Database
from homeserver.storage.outbox import DestinationState, OutboxStore
from homeserver.util.clock import SYSTEM_CLOCK, Clock
from homeserver.util.lru import LruCache

log = logging.getLogger(__name__)

REFUSED_LOG_MEMORY = 10_000
# EDUs that must survive an outage: a lost to-device message can be a lost room key, which
# the recipient could then never decrypt. They are queued for a destination in catch-up
# too, a catch-up collapse keeps them, and a destination in backoff keeps the newest
# DURABLE_EDU_KEEP of them (the others: the newest outbound.max_queued_edus).
DURABLE_EDU_TYPES = ("m.direct_to_device",)
DURABLE_EDU_KEEP = 10_000


class OutboundSender:
    """The single entry point of outbound PDUs and EDUs (``rooms.outbox.Outbox``), and the
    owner of every destination's queue."""

    def __init__(
        self,
        server_name: str,
        db: Database,
        client: FederationClient,
        config: OutboundConfig,
        metrics: Metrics,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.server_name = server_name
        self.db = db
        self.store = OutboxStore(db, durable_edu_types=DURABLE_EDU_TYPES)
        self.client = client
        self.config = config
        self.metrics = metrics
        self.clock = clock
        self._queues: dict[str, DestinationQueue] = {}
        self._refused_logged: LruCache[str, None] = LruCache(REFUSED_LOG_MEMORY)
        self._sweeper: asyncio.Task[None] | None = None
        self._stopping = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Load retry state and start a worker for every destination with a queue."""
        for dest, dead, catch_up, failures in await self.store.troubled_destinations():
            queue = self._queue(dest)
            queue.backoff = bool(dead or failures)
            queue.dead = dead
            queue.catch_up = catch_up
        self._update_gauges()
        await self._sweep()
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="outbound-sweeper")

    async def stop(self) -> None:
        """Cancel every worker and wait for them; queued items stay in the database."""
        self._stopping = True
        tasks = [t for q in self._queues.values() if (t := q.cancel()) is not None]
        if self._sweeper is not None:
            self._sweeper.cancel()
            tasks.append(self._sweeper)
        await asyncio.gather(*tasks, return_exceptions=True)
        self._sweeper = None

    # ------------------------------------------------------------------ entry points

    def destinations_for_event(
        self,
        event: Event,
        state_before: Mapping[StateKey, MemberState],
        state_after: Mapping[StateKey, MemberState] | None,
    ) -> set[str]:
        """The servers our ``event`` goes to (``destinations.destinations_for_event``)."""
        return destinations_for_event(event, state_before, state_after, server_name=self.server_name)

    async def enqueue_event(
        self, conn: Connection, event: Event, destinations: Iterable[str],
        accepted: Accepted = Accepted.LOCAL, *, handshake_origin: str | None = None,
    ) -> None:
        """Queue an event for ``destinations``, inside the caller's database transaction;
        the destinations are woken once that transaction has committed.

        The one entry point for outbound PDUs. ``Accepted.LOCAL``: an event whose sender
        is not a user of this server is refused (another server's event is never relayed).
        ``Accepted.HANDSHAKE`` (only from our send_join/send_leave/send_knock handlers): a
        join, leave or knock by a user of ``handshake_origin`` for themself, queued for
        every destination but that origin; anything else is refused. Refusals are counted.
        """
        if accepted is Accepted.HANDSHAKE:
            reason = handshake_refusal(event, handshake_origin, self.server_name)
            if reason is not None:
                self._refuse(event, f"refused to announce a handshake event: {reason}")
                return
            assert handshake_origin is not None
            excluded = {handshake_origin, self.server_name}
            membership = str(event.membership)
        elif accepted is Accepted.LOCAL and is_local_user(event.sender, self.server_name):
            excluded = {self.server_name}
            membership = None
        else:
            self._refuse(event, "refused to send an event created by another server")
            return
        dests = [d for d in other_servers(destinations, self.server_name) if d not in excluded]
        if not dests:
            return
        catching_up = {d for d in dests if (q := self._queues.get(d)) is not None and q.catch_up}
        await self.store.add_event(
            conn, event.event_id, event.room_id, event.pdu, self.clock.time_ms(), dests, catching_up
        )
        conn.call_after(lambda: self._queued(dests, pdus=1))
        if membership is not None:
            counter = self.metrics.handshake_announcements.labels(membership)
            conn.call_after(counter.inc)

    def _refuse(self, event: Event, message: str) -> None:
        self.metrics.refused_relays.inc()
        if self._refused_logged.add(event.event_id, None):
            log.warning(message, extra={"event_id": event.event_id, "sender": event.sender, "room_id": event.room_id})

    async def enqueue_edu(
        self,
        edu_type: str,
        content: Mapping[str, Any],
        destinations: Iterable[str],
        conn: Connection | None = None,
    ) -> bool:
        """Queue an EDU about our own users; return False (and count it) if refused.

        Accepted: m.typing, m.receipt, m.presence, m.direct_to_device, m.device_list_update
        whose users are all ours; m.direct_to_device only to the one server of its targets.
        Runs in ``conn``'s transaction when given; the
        destinations are woken once it has committed.
        """
        destinations = list(destinations)
        if not edu_is_ours(edu_type, content, self.server_name):
            self.metrics.refused_edus.inc()
            log.warning("refused to send an EDU not about our own users", extra={"edu_type": edu_type})
            return False
        if edu_type == "m.direct_to_device" and set(destinations) != {to_device_target(content)}:
            self.metrics.refused_edus.inc()
            log.warning("refused to send a to-device EDU anywhere but its target's server")
            return False
        # A destination in catch-up is not sent EDUs, stale by the time it is back, but for
        # the durable ones.
        durable = edu_type in DURABLE_EDU_TYPES
        dests = [d for d in other_servers(destinations, self.server_name) if durable or not self._in_catch_up(d)]
        if not dests:
            return True
        # A destination in backoff keeps only its newest EDUs (max_queued_edus, or
        # DURABLE_EDU_KEEP of the durable types).
        trimmed = {d for d in dests if (q := self._queues.get(d)) is not None and q.backoff}
        keep = DURABLE_EDU_KEEP if durable else self.config.max_queued_edus
        now = self.clock.time_ms()
        if conn is None:
            async with self.db.transaction() as tx:
                await self.store.add_edu(tx, dests, edu_type, content, now, trimmed, keep)
                tx.call_after(lambda: self._queued(dests, edus=1))
        else:
            await self.store.add_edu(conn, dests, edu_type, content, now, trimmed, keep)
            conn.call_after(lambda: self._queued(dests, edus=1))
        return True

    async def notify_destination_up(self, destination: str) -> None:
        """Called on every authenticated inbound request: retry a backed-off destination now.

        Costs one dictionary look-up for a healthy destination.
        """
        queue = self._queues.get(destination)
        if queue is None or not queue.backoff or self._stopping:
            return
        queue.backoff = queue.dead = False
        await self.store.retry_now(destination)
        self._update_gauges()
        log.info("destination is back, retrying now", extra={"destination": destination})
        queue.kick()
        queue.wake()

    # ------------------------------------------------------------------ introspection

    def destinations_in_backoff(self) -> set[str]:
        return {d for d, q in self._queues.items() if q.backoff}

    async def queue_depth(self, destination: str) -> tuple[int, int]:
        return await self.store.queue_depth(destination)

    async def get_state(self, destination: str) -> DestinationState | None:
        return await self.store.get_state(destination)

    # ------------------------------------------------------------------ queues

    def _queue(self, destination: str) -> DestinationQueue:
        queue = self._queues.get(destination)
        if queue is None:
            queue = DestinationQueue(
                destination, server_name=self.server_name, store=self.store, client=self.client,
                config=self.config, metrics=self.metrics, clock=self.clock, changed=self._update_gauges,
            )
            self._queues[destination] = queue
            if self._stopping:
                queue.cancel()
        return queue

    def _in_catch_up(self, destination: str) -> bool:
        queue = self._queues.get(destination)
        return queue is not None and queue.catch_up

    def _queued(self, dests: list[str], pdus: int = 0, edus: int = 0) -> None:
        """After the enqueuing transaction committed: the destinations have work."""
        if self._stopping:
            return
        for dest in dests:
            queue = self._queue(dest)
            queue.added(pdus, edus)
            queue.wake()
        self._update_gauges()

    async def _sweep(self) -> None:
        """Start a worker for every queue without one (a safety net: wake-ups follow commits)."""
        await self.store.drop_unqueued_events()
        for dest in await self.store.destinations_with_queue():
            queue = self._queue(dest)
            if not queue.running:
                queue.wake()

    async def _sweep_forever(self) -> None:
        while True:
            await self.clock.sleep(self.config.sweep_interval)
            try:
                await self._sweep()
            except Exception:
                log.exception("outbound sweep failed")

    def _update_gauges(self) -> None:
        queues = self._queues.values()
        self.metrics.outbound_destinations_backoff.set(sum(1 for q in queues if q.backoff and not q.dead))
        self.metrics.outbound_destinations_dead.set(sum(1 for q in queues if q.dead))
        self.metrics.outbound_queue_depth.labels("pdu").set(sum(q.depth[0] for q in queues))
        self.metrics.outbound_queue_depth.labels("edu").set(sum(q.depth[1] for q in queues))
