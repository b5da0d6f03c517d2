"""The inbound worker: drains the durable inbox (``homeserver.storage.inbox``) that
``PUT /send`` fills, fairly across origins and in order within a room.

It claims entries in bounded batches, fairly across origins (each origin gets an equal
share of a claim, so one flooding server cannot starve the others); processes the events of
one room in order, one at a time; runs up to ``room_concurrency`` rooms at once,
round-robin, so a room that is slow (a dead peer being asked for missing events) holds one
slot for at most its budget; and on start-up resets the claims of a previous run, so every
entry written before a crash is processed. Processing is idempotent (an event already
stored is skipped), which is what lets an entry be deleted after it is processed rather
than atomically with it. While a /send is being read or answered the worker gives way.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator

from homeserver.config import InboundConfig
from homeserver.metrics import Metrics
from homeserver.storage.inbox import InboxEntry, InboxStore
from homeserver.util.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)

PRUNE_INTERVAL_SECONDS = 300.0
IDLE_POLL_SECONDS = 5.0
# Wait after the loop failed (say, the database was unreachable) before it runs again.
RETRY_SECONDS = 1.0
STOP_TIMEOUT_SECONDS = 10.0
# At shutdown, entries already claimed get this long to finish before being cancelled.
SHUTDOWN_GRACE_SECONDS = 5.0
# A room task gives its slot to a waiting room after this many entries.
ROOM_SLICE = 20

# Processes one entry; a future returned resolves once what it stored is committed (the
# entry is deleted then, or handed back to the inbox if the commit failed).
Processor = Callable[[InboxEntry], Awaitable["asyncio.Future[None] | None"]]

# Processed entries are deleted in batches of this size while the worker is busy.
DELETE_BATCH = 50
# Longest the worker holds back for /send requests being answered, each time.
DOOR_YIELD_SECONDS = 0.05
# How long the door bell (a /send's first bytes read) holds the worker back if no handler
# follows.
DOOR_BELL_SECONDS = 0.02


class InboundWorker:
    """Drains the inbox; ``notify`` wakes it after /send enqueued something.

    ``clock`` times the idle poll, the retry after a failure, the pruning of old
    transactions and ``quiet``. The door's hold-backs (tens of milliseconds, on the /send
    path) and the shutdown grace bound real waits: they use the event loop's own timers."""

    def __init__(
        self,
        store: InboxStore,
        process: Processor,
        config: InboundConfig,
        metrics: Metrics,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._store = store
        self._clock = clock
        self._process = process
        self._config = config
        self._metrics = metrics
        self._origins: set[str] = set()
        self._origin_order: deque[str] = deque()
        # Origins whose last claim found nothing outside the rooms then full, with those
        # rooms: not claimed from again until one of them has room or the origin sends
        # more (such a claim scans every entry of the full rooms and finds nothing).
        self._blocked: dict[str, frozenset[str]] = {}
        # Per origin, how often it was (re)added: a claim round that finds an origin drained
        # forgets it only if nothing was enqueued for it while the round was claiming.
        self._added: dict[str, int] = {}
        self._queues: dict[str, deque[InboxEntry]] = {}
        self._waiting: deque[str] = deque()  # rooms with entries and no running task
        self._running: dict[str, asyncio.Task[None]] = {}
        self._pending = 0  # claimed and not yet processed
        self._uncommitted = 0  # processed, their deferred commit not yet landed
        self._done: list[tuple[int, str]] = []  # processed entries (id, origin) to delete
        # Entries whose commit failed, with their origins: to be claimed again.
        self._released: list[tuple[int, str]] = []
        self._wake = asyncio.Event()
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._main: asyncio.Task[None] | None = None
        self._last_prune = 0.0
        self.processed = 0  # entries processed since start (observability, tests)
        # Answer first: while /send requests are being answered the worker holds back
        # (for at most DOOR_YIELD_SECONDS at a time, so a flood cannot starve it).
        # Optional: start the next entry's state-free checks early (the processor's).
        self._check_ahead: Callable[[InboxEntry], None] | None = getattr(process, "check_ahead", None)
        self._door = 0
        self._last_answered = 0.0  # clock.monotonic() when the last /send was answered
        self._door_clear = asyncio.Event()
        self._door_clear.set()
        self._bell: asyncio.TimerHandle | None = None  # a /send on its way to its handler
        self.door_bells = 0  # since start (observability, tests)
        # Group commits of deferred writes hold back too while a reply is being written.
        store.set_group_commit_gate(self._door_clear)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        # Claims are in memory: entries claimed by a run that crashed are taken up again.
        self._store.reset_claims()
        for origin in await self._store.origins_with_entries():
            self._add_origin(origin)
        self._metrics.inbox_depth.set(await self._store.count())
        self._main = asyncio.create_task(self._run(), name="inbound-worker")

    async def stop(self) -> None:
        """Graceful: claim nothing more, let the rooms finish the entries already claimed
        (for at most SHUTDOWN_GRACE_SECONDS), then cancel the rest; entries not finished
        stay in the inbox and are processed on the next start (no work is lost)."""
        self._end_bell()
        main, self._main = self._main, None
        if main is not None:
            main.cancel()
            await asyncio.wait([main], timeout=STOP_TIMEOUT_SECONDS)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SHUTDOWN_GRACE_SECONDS
        while self._running and loop.time() < deadline:
            # A finishing room starts the next waiting room: wait for those too.
            await asyncio.wait(list(self._running.values()), timeout=deadline - loop.time())
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_TIMEOUT_SECONDS)
        close = getattr(self._process, "close", None)
        if close is not None:
            close()
        # Let deferred commits land (their callbacks mark entries done).
        try:
            await self._store.settle()
        except Exception:
            log.warning("deferred writes failed at shutdown", exc_info=True)
        await asyncio.sleep(0)
        # Entries processed but not yet deleted would only be skipped as duplicates on
        # restart; deleting them now saves that look-up.
        if self._done:
            try:
                await self._store.delete(self._done)
            except Exception:
                log.warning("could not delete processed inbox entries at shutdown", exc_info=True)
            self._done.clear()

    @contextlib.contextmanager
    def answering(self) -> Iterator[None]:
        """Mark a /send being answered: the worker yields the event loop to it."""
        self._door += 1
        self._door_clear.clear()
        self._end_bell()
        try:
            yield
        finally:
            self._door -= 1
            self._last_answered = self._clock.monotonic()
            if not self._door and self._bell is None:
                self._door_clear.set()

    def door_bell(self) -> None:
        """The door bell: the federation listener read the first bytes of a /send. Give way
        from now on, not only once its handler runs (``answering``), for at most
        DOOR_BELL_SECONDS if no handler comes."""
        self.door_bells += 1
        self._door_clear.clear()
        self._end_bell()
        self._bell = asyncio.get_running_loop().call_later(DOOR_BELL_SECONDS, self._bell_expired)

    @property
    def holding_back(self) -> bool:
        """Whether the worker holds back now (for a /send being read or answered)."""
        return not self._door_clear.is_set()

    def _end_bell(self) -> None:
        if self._bell is not None:
            self._bell.cancel()
            self._bell = None

    def _bell_expired(self) -> None:
        self._bell = None
        if not self._door:
            self._door_clear.set()

    def quiet(self, seconds: float) -> bool:
        """Nothing to do and no /send answered for ``seconds`` (see gcpolicy)."""
        return (self.idle and not self._door and self._bell is None
                and self._clock.monotonic() - self._last_answered >= seconds)

    async def _give_way(self) -> None:
        # Always let the loop turn once: with everything cached, processing an entry may
        # never suspend, and a room would otherwise hold the loop for its whole queue.
        await asyncio.sleep(0)
        if not self._door_clear.is_set():
            try:
                async with asyncio.timeout(DOOR_YIELD_SECONDS):
                    await self._door_clear.wait()
            except TimeoutError:
                pass

    def notify(self, origin: str, keys: Iterable[str]) -> None:
        """/send enqueued entries from ``origin`` for the queues ``keys`` (rooms, or
        ``edu <origin>``)."""
        blocked = self._blocked.get(origin)
        if blocked is not None and origin in self._origins and blocked.issuperset(keys):
            # Only more for rooms already full: nothing to claim before they have room.
            self._wake.set()
            return
        self._add_origin(origin)
        self._wake.set()

    def pause(self) -> None:
        """Claim nothing more until ``resume`` (entries already claimed finish)."""
        self._resumed.clear()

    def resume(self) -> None:
        self._resumed.set()
        self._wake.set()

    @property
    def idle(self) -> bool:
        return self._pending == 0 and self._uncommitted == 0 and not self._origins and not self._released

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until the inbox is drained; False if ``timeout`` (real seconds) passed first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.idle or self._done:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    # ------------------------------------------------------------------ the loop

    def _add_origin(self, origin: str) -> None:
        self._blocked.pop(origin, None)
        self._added[origin] = self._added.get(origin, 0) + 1
        if origin not in self._origins:
            self._origins.add(origin)
            self._origin_order.append(origin)

    async def _run(self) -> None:
        while True:
            try:
                # Cleared before the work, not after: a wake-up that arrives during the
                # work (say, an entry handed back) is not lost.
                self._wake.clear()
                await self._flush_done()
                await self._maybe_prune()
                # The inbox's statements may run on this thread (SQLite's side connection):
                # a turn of the loop between them, so a /send never waits for all of them.
                await asyncio.sleep(0)
                claimed = 0
                if self._resumed.is_set():
                    claimed = await self._claim_round()
                if claimed == 0:
                    if self._done and not self._pending:
                        continue
                    if not await self._wait_for_wake(IDLE_POLL_SECONDS):
                        # Another process may have written entries (PostgreSQL).
                        for origin in await self._store.origins_with_entries():
                            self._add_origin(origin)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("inbound worker loop failed; retrying")
                await self._clock.sleep(RETRY_SECONDS)

    async def _wait_for_wake(self, seconds: float) -> bool:
        """Wait for ``_wake``, or ``seconds`` of the clock: False if the time ran out."""
        timer = asyncio.ensure_future(self._clock.sleep(seconds))

        def time_up(done: asyncio.Future[None]) -> None:
            if not done.cancelled():
                self._wake.set()

        timer.add_done_callback(time_up)
        try:
            await self._wake.wait()
        finally:
            timer.cancel()
        return not timer.done() or timer.cancelled()

    async def _claim_round(self) -> int:
        """Claim up to the free slots, an equal share per origin with entries."""
        free = self._config.worker_batch_size - self._pending
        if self._uncommitted >= self._config.worker_batch_size:
            free = 0  # the database is behind: do not run further ahead of it
        # Claim in batches: wait until half the slots are free (or the worker is idle), so
        # a busy worker does not pay a claim transaction per processed entry.
        if free <= 0 or not self._origin_order or (self._pending and free * 2 < self._config.worker_batch_size):
            return 0
        full = [k for k, q in self._queues.items() if len(q) >= self._config.max_queued_per_room]
        origins = list(self._origin_order)[: max(1, free)]
        share = max(1, free // len(origins))
        claimed: list[InboxEntry] = []
        try:
            await self._claim_origins(origins, share, full, claimed)
        except BaseException:
            # Nothing of this round reaches a queue: hand back what it took, and claim from
            # those origins again (the round may have found one drained meanwhile).
            self._store.release([(e.id, e.origin) for e in claimed])
            for origin in {e.origin for e in claimed}:
                self._add_origin(origin)
            raise
        claimed.sort(key=lambda e: e.id)
        prefetch = getattr(self._process, "prefetch", None)
        if prefetch is not None and claimed:
            self._pending += len(claimed)  # claimed, not idle, while the look-up runs
            try:
                await prefetch(claimed)
            except Exception:  # an optimisation only: each entry then looks itself up
                log.warning("inbox prefetch failed", exc_info=True)
            finally:
                self._pending -= len(claimed)
        for entry in claimed:
            self._enqueue(entry)
        return len(claimed)

    async def _claim_origins(
        self, origins: list[str], share: int, full: list[str], claimed: list[InboxEntry]
    ) -> None:
        """Claim ``share`` entries of each origin into ``claimed`` (as they come, so that a
        failure part-way leaves there everything already taken)."""
        for origin in origins:
            blocked = self._blocked.get(origin)
            if blocked is not None and blocked.issubset(full):
                self._origin_order.remove(origin)
                self._origin_order.append(origin)
                continue
            added = self._added.get(origin, 0)
            entries: list[InboxEntry] = []
            while len(entries) < share:
                # In pieces: on SQLite a claim runs on this thread (reading the bodies holds
                # the loop), and a /send arriving meanwhile waits for the piece, not for the
                # whole claim.
                want = min(self._store.claim_piece, share - len(entries))
                got = await self._store.claim(origin, want, full)
                entries.extend(got)
                claimed.extend(got)
                await self._give_way()
                if len(got) < want:
                    break
            # Rotate: the next round starts with the next origin.
            self._origin_order.remove(origin)
            drained = len(entries) < share and self._added.get(origin, 0) == added
            if drained and not full:
                self._origins.discard(origin)  # drained (for now)
                self._added.pop(origin, None)
                self._blocked.pop(origin, None)
            else:
                self._origin_order.append(origin)
                if drained:
                    self._blocked[origin] = frozenset(full)

    def _enqueue(self, entry: InboxEntry) -> None:
        key = entry.queue_key
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
            if key not in self._running:
                self._waiting.append(key)
        queue.append(entry)
        self._pending += 1
        self._start_rooms()

    def _start_rooms(self) -> None:
        while self._waiting and len(self._running) < self._config.room_concurrency:
            key = self._waiting.popleft()
            self._running[key] = asyncio.create_task(self._room(key), name=f"inbound-room {key}")

    async def _room(self, key: str) -> None:
        try:
            done_here = 0
            queue = self._queues[key]
            while queue:
                await self._give_way()
                entry = queue[0]
                started = time.perf_counter()
                if len(queue) > 1 and self._check_ahead is not None:
                    self._check_ahead(queue[1])
                commit: asyncio.Future[None] | None = None
                try:
                    commit = await self._process(entry)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    # The entry is dropped: a bug must not wedge the room forever.
                    log.exception(
                        "inbound entry failed",
                        extra={"origin": entry.origin, "event_id": entry.event_id, "room_id": entry.room_id},
                    )
                if entry.kind == "pdu":
                    self._metrics.inbound_event_seconds.observe(time.perf_counter() - started)
                queue.popleft()
                self._pending -= 1
                if commit is None:
                    self._finish(entry)
                else:
                    self._uncommitted += 1
                    commit.add_done_callback(functools.partial(self._committed, entry))
                done_here += 1
                if done_here >= ROOM_SLICE and self._waiting and queue:
                    # Give the slot to a waiting room; come back at the end of the line.
                    self._waiting.append(key)
                    return
            del self._queues[key]
        finally:
            self._running.pop(key, None)
            self._start_rooms()

    def _finish(self, entry: InboxEntry) -> None:
        self.processed += 1
        self._done.append((entry.id, entry.origin))
        self._wake.set()

    def _committed(self, entry: InboxEntry, commit: asyncio.Future[None]) -> None:
        self._uncommitted -= 1
        if not commit.cancelled() and commit.exception() is None:
            self._finish(entry)
            return
        # Not stored after all: hand the entry back to the inbox, to be claimed again.
        log.warning("inbound entry not committed; it will be processed again",
                    extra={"origin": entry.origin, "event_id": entry.event_id})
        self._metrics.inbound_commit_retries.inc()
        self._released.append((entry.id, entry.origin))
        self._wake.set()

    async def _flush_done(self) -> None:
        if self._released:
            # The origins are (re-)registered for the next claim, which runs after this in
            # the same task (an earlier one may have found the origin drained).
            for _, origin in self._released:
                self._add_origin(origin)
            self._store.release(self._released)
            self._released.clear()
        if not self._done or (self._pending and len(self._done) < DELETE_BATCH):
            return
        # Left in ``_done`` until the delete has committed (entries finished meanwhile are
        # appended after them), so ``wait_idle`` does not return while it is under way;
        # if the delete fails they are still there, deleted next time.
        ids = self._done[:]
        await self._store.delete(ids)
        del self._done[: len(ids)]
        self._metrics.inbox_depth.dec(len(ids))

    async def _maybe_prune(self) -> None:
        now = self._clock.monotonic()
        if now - self._last_prune < PRUNE_INTERVAL_SECONDS:
            return
        self._last_prune = now
        cutoff = self._clock.time_ms() - self._config.transaction_retention_seconds * 1000
        await self._store.prune_transactions(cutoff)
