"""One destination's side of the outbound sender: its flags (backoff, dead, catch-up),
and the worker task that sends its durable queue as /send transactions, one in flight at a
time (at most ``max_pdus_per_transaction`` PDUs read from the database for each), retrying
with backoff. After an outage the whole queue is replayed in order; it is collapsed to
catch-up markers only past the replay bound (``catch_up_max_pdus`` queued PDUs, or the
oldest older than ``catch_up_max_age_hours``) or when the destination is dead. A backlog
is paced: after a full transaction the next waits until the destination holds the last
event sent (``_pace``), so a receiver that stages before it processes is not flooded.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from urllib.parse import quote

from homeserver.config import OutboundConfig
from homeserver.federation.destinations import PERMANENT_STATUSES, is_dead, next_interval_ms, next_txn_id
from homeserver.metrics import Metrics
from homeserver.net.client import FederationClient, FederationRequestError
from homeserver.storage.outbox import Batch, DestinationState, OutboxStore
from homeserver.util.clock import Clock

log = logging.getLogger("homeserver.federation.sender")

# Replay pacing (``DestinationQueue._pace``): first poll interval, doubling up to the max.
PACE_FIRST_POLL_SECONDS = 0.05
PACE_MAX_POLL_SECONDS = 1.0


class DestinationQueue:
    """The in-memory state of one destination and the task that drains its queue.

    Flags mirror the database (``outbound_destinations``): ``backoff`` (failing or dead),
    ``dead`` (not tried until it contacts us), ``catch_up`` (the queue keeps one PDU per
    room). ``depth`` is the queue length as last seen, for the gauges; ``changed`` is
    called whenever a flag or the depth changed.
    """

    def __init__(
        self,
        destination: str,
        *,
        server_name: str,
        store: OutboxStore,
        client: FederationClient,
        config: OutboundConfig,
        metrics: Metrics,
        clock: Clock,
        changed: Callable[[], None],
    ) -> None:
        self.destination = destination
        self.server_name = server_name
        self.store = store
        self.client = client
        self.config = config
        self.metrics = metrics
        self.clock = clock
        self._changed = changed
        self.backoff = False
        self.dead = False
        self.catch_up = False
        self.depth = (0, 0)  # (pdus, edus)
        self._wake = asyncio.Event()  # new items queued
        self._kick = asyncio.Event()  # retry now (the destination came back)
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    # ------------------------------------------------------------------ control

    @property
    def running(self) -> bool:
        return self._task is not None

    def wake(self) -> None:
        """New items may be queued: start the worker, or have it look again."""
        if self._stopping or self.dead:
            return
        self._wake.set()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"outbound:{self.destination}")

    def kick(self) -> None:
        """Cut a backoff wait short."""
        self._kick.set()

    def added(self, pdus: int = 0, edus: int = 0) -> None:
        p, e = self.depth
        self.depth = (p + pdus, e + edus)

    def cancel(self) -> asyncio.Task[None] | None:
        """Stop for good: cancel the worker and return its task (to be awaited)."""
        self._stopping = True
        task = self._task
        if task is not None:
            task.cancel()
        return task

    # ------------------------------------------------------------------ the worker

    async def _run(self) -> None:
        me = asyncio.current_task()
        dest = self.destination
        ended_cleanly = False
        try:
            while not self._stopping:
                state = await self.store.load_state(dest)
                if state.dead:
                    ended_cleanly = True
                    return
                wait_ms = state.next_attempt_ts - self.clock.time_ms()
                if wait_ms > 0:
                    # In backoff: sleep until the retry time, or until it contacts us.
                    self._kick.clear()
                    await self._wait_for_kick(wait_ms / 1000)
                    continue
                self._wake.clear()
                if state.failure_count and not state.catch_up:
                    await self._catch_up_if_needed()
                    state = await self.store.load_state(dest)
                batch = await self._next_batch(state)
                if batch is None:
                    if self._wake.is_set():
                        continue
                    self.depth = (0, 0)
                    self._changed()
                    ended_cleanly = True
                    return
                await self._send(state, batch)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("outbound worker failed", extra={"destination": dest})
        finally:
            if self._task is me:
                self._task = None
                # A wake-up that came while this worker was deciding to end (a read that saw
                # the destination dead just before notify_destination_up revived it, or items
                # queued after the last look) starts a worker again: none may be lost. Not
                # after a failure, which would otherwise spin.
                if ended_cleanly and self._wake.is_set() and not self._stopping and not self.dead:
                    self._task = asyncio.create_task(self._run(), name=f"outbound:{dest}")

    async def _wait_for_kick(self, seconds: float) -> None:
        kicked = asyncio.ensure_future(self._kick.wait())
        slept = asyncio.ensure_future(self.clock.sleep(seconds))
        try:
            await asyncio.wait((kicked, slept), return_when=asyncio.FIRST_COMPLETED)
        finally:
            kicked.cancel()
            slept.cancel()

    async def _next_batch(self, state: DestinationState) -> Batch | None:
        """The oldest PDUs and EDUs of the queue, or the pending transaction to retry."""
        dest = state.destination
        cfg = self.config
        if state.pending_txn_id is not None:
            # Retry exactly what was in flight: same txnId, same content.
            pdus = await self.store.queued_pdus(dest, cfg.max_pdus_per_transaction, state.pending_pdu_max or 0)
            edus = await self.store.queued_edus(dest, cfg.max_edus_per_transaction, state.pending_edu_max or 0)
            if not pdus and not edus:
                await self.store.clear_pending(dest)
                return await self._next_batch(await self.store.load_state(dest))
            return Batch(state.pending_txn_id, pdus, edus)
        pdus = await self.store.queued_pdus(dest, cfg.max_pdus_per_transaction)
        edus = await self.store.queued_edus(dest, cfg.max_edus_per_transaction)
        if not pdus and not edus:
            return None
        txn = next_txn_id(state.last_txn_id, self.clock.time_ms())
        await self.store.begin_transaction(dest, txn, pdus[-1][0] if pdus else 0, edus[-1][0] if edus else 0)
        return Batch(str(txn), pdus, edus)

    async def _send(self, state: DestinationState, batch: Batch) -> None:
        dest = state.destination
        body = {
            "origin": self.server_name,
            "origin_server_ts": self.clock.time_ms(),
            "pdus": [pdu for _, _, pdu in batch.pdu_rows],
            "edus": [edu for _, edu in batch.edu_rows],
        }
        path = f"/_matrix/federation/v1/send/{quote(batch.txn_id, safe='')}"
        try:
            reply = await self.client.put_json(dest, path, body, timeout=self.config.send_timeout)
        except FederationRequestError as e:
            if e.status in PERMANENT_STATUSES:
                log.warning(
                    "destination rejected a transaction; dropping it",
                    extra={"destination": dest, "txn_id": batch.txn_id, "status": e.status, "errcode": e.errcode},
                )
                self.metrics.outbound_transactions.labels(dest, "rejected").inc()
                await self._succeeded(state, batch)
                return
            self.metrics.outbound_transactions.labels(dest, "failed").inc()
            await self._failed(state, str(e))
            return
        self.metrics.outbound_transactions.labels(dest, "ok").inc()
        if batch.pdu_rows:
            self.metrics.outbound_pdus.labels(dest).inc(len(batch.pdu_rows))
        if batch.edu_rows:
            self.metrics.outbound_edus.labels(dest).inc(len(batch.edu_rows))
        results = reply.get("pdus") if isinstance(reply, dict) else None
        if isinstance(results, dict):
            for event_id, result in results.items():
                if isinstance(result, dict) and result.get("error"):
                    log.info(
                        "destination did not accept an event",
                        extra={"destination": dest, "event_id": event_id, "error": str(result["error"])[:200]},
                    )
        await self._succeeded(state, batch)
        if len(batch.pdu_rows) >= self.config.max_pdus_per_transaction and (await self.store.queue_depth(dest))[0]:
            await self._pace(dest, batch)

    async def _pace(self, dest: str, batch: Batch) -> None:
        """A full transaction went and more are queued behind it (a replay, or a burst the
        destination is slow to take): wait until the destination holds the transaction's
        last event before sending the next, polling ``GET /event`` (404: not yet) for at
        most ``send_timeout``. Synapse acknowledges a transaction once its PDUs are staged,
        processes them afterwards, and cuts a room's staging area down to its forward
        extremities once it holds 100 events: a backlog sent as fast as it is acknowledged
        would mostly be lost to a gap that it fetches only 10 events at a time."""
        path = f"/_matrix/federation/v1/event/{quote(batch.pdu_rows[-1][1], safe='')}"
        deadline = self.clock.time_ms() + self.config.send_timeout * 1000
        delay = PACE_FIRST_POLL_SECONDS
        while True:
            try:
                await self.client.get_json(dest, path, timeout=self.config.send_timeout)
                return
            except FederationRequestError as e:
                if e.status != 404:
                    return  # not a "not yet": pacing cannot tell, send on
            left = (deadline - self.clock.time_ms()) / 1000
            if left <= 0:
                log.info("destination still lacks the last event sent; sending on",
                         extra={"destination": dest, "event_id": batch.pdu_rows[-1][1]})
                return
            await self.clock.sleep(min(delay, left))
            delay = min(2 * delay, PACE_MAX_POLL_SECONDS)

    async def _succeeded(self, state: DestinationState, batch: Batch) -> None:
        await self.store.delivered(state.destination, batch, self.clock.time_ms())
        if state.failure_count or state.catch_up:
            log.info("destination recovered",
                     extra={"destination": state.destination, "failures": state.failure_count})
        self.backoff = self.catch_up = self.dead = False
        p, e = self.depth
        self.depth = (max(0, p - len(batch.pdu_rows)), max(0, e - len(batch.edu_rows)))
        self._changed()

    async def _failed(self, state: DestinationState, reason: str) -> None:
        dest = state.destination
        now = self.clock.time_ms()
        cfg = self.config
        interval = next_interval_ms(state.retry_interval_ms, cfg)
        jitter = 1 + random.uniform(-cfg.backoff_jitter, cfg.backoff_jitter)
        next_attempt = now + int(interval * jitter)
        first = state.first_failure_ts if state.first_failure_ts is not None else now
        dead = is_dead(first, now, cfg)
        # Dead: collapsed whatever its size; already in catch-up: one marker per room.
        past = "dead" if dead else None if state.catch_up else await self._past_replay_bound()
        collapse = past is not None
        if collapse:
            # Before the collapse commits, as in _catch_up_if_needed.
            self.catch_up = True
        await self.store.failed(dest, first, interval, next_attempt, dead, collapse)
        if past is not None:
            self.metrics.outbound_catch_ups.labels(past).inc()
        pdus, edus = await self.store.queue_depth(dest)
        self.depth = (pdus, edus)
        self.backoff = True
        if dead:
            self.dead = True
            log.warning(
                "destination failing for too long; not trying it until it contacts us",
                extra={"destination": dest, "failing_since_ts": first},
            )
        else:
            log.info(
                "sending to destination failed; backing off",
                extra={"destination": dest, "retry_in_ms": next_attempt - now,
                       "failures": state.failure_count + 1, "reason": reason[:300]},
            )
        self._changed()

    async def _past_replay_bound(self) -> str | None:
        """Why the queue is past what a recovering destination is replayed ("threshold":
        more than ``catch_up_max_pdus`` PDUs; "age": the oldest queued longer than
        ``catch_up_max_age_hours`` ago), or None: it is replayed in full, in order."""
        pdus, oldest_ts = await self.store.pdu_queue_extent(self.destination)
        if pdus > self.config.replay_max_pdus:
            return "threshold"
        max_age_ms = self.config.catch_up_max_age_hours * 3_600_000
        if oldest_ts is not None and self.clock.time_ms() - oldest_ts > max_age_ms:
            return "age"
        return None

    async def _catch_up_if_needed(self) -> None:
        reason = await self._past_replay_bound()
        if reason is None:
            return
        # In catch-up before the collapse commits: an event enqueued meanwhile already
        # replaces its room's marker instead of growing the queue.
        self.catch_up = True
        await self.store.collapse(self.destination)
        self.metrics.outbound_catch_ups.labels(reason).inc()
        log.info("catching destination up instead of replaying its queue",
                 extra={"destination": self.destination, "reason": reason})
