"""The durable inbox of inbound federation, and the worker that drains it.

``InboxStore`` is what ``PUT /send`` writes: the (origin, txnId) de-duplication row and the
transaction's PDUs and EDUs go into the database in ONE transaction, and the row's primary
key makes a concurrent repeat of the same transaction enqueue nothing (the second insert of
the de-duplication row finds the first and returns its stored reply). A PDU already in the
inbox (``inbox.event_id`` is unique) is not enqueued twice.

``InboundWorker`` drains the inbox: it claims entries in bounded batches, fairly across
origins (each origin gets an equal share of a claim, so one flooding server cannot starve
the others); processes the events of one room in order, one at a time; runs up to
``room_concurrency`` rooms at once, round-robin, so a room that is slow (a dead peer being
asked for missing events) holds one slot for at most its budget; and on start-up resets
the claims of a previous run, so every entry written before a crash is processed.
Processing is idempotent (an event already stored is skipped), which is what lets an entry
be deleted after it is processed rather than atomically with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from homeserver.config import InboundConfig
from homeserver.events.canonical import loads
from homeserver.metrics import Metrics
from homeserver.storage.database import Connection, Database, Row, is_deadlock, is_unique_violation
from homeserver.storage.events import Outcome

log = logging.getLogger(__name__)

PRUNE_INTERVAL_SECONDS = 300.0
IDLE_POLL_SECONDS = 5.0
STOP_TIMEOUT_SECONDS = 10.0
# At shutdown, entries already claimed get this long to finish before being cancelled.
SHUTDOWN_GRACE_SECONDS = 5.0
# A room task gives its slot to a waiting room after this many entries.
ROOM_SLICE = 20


def _now_ms() -> int:
    return int(time.time() * 1000)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class InboxEntry:
    """One claimed inbox entry. The body is parsed when first asked for, so claiming a
    batch does not hold the event loop for a hundred JSON parses."""

    __slots__ = ("_body", "event_id", "id", "kind", "origin", "raw", "room_id", "room_version")

    def __init__(
        self, id: int, origin: str, kind: str, room_id: str | None, event_id: str | None,
        room_version: str | None, raw: str,
    ) -> None:
        self.id = id
        self.origin = origin
        self.kind = kind  # "pdu" or "edu"
        self.room_id = room_id
        self.event_id = event_id
        self.room_version = room_version
        self.raw = raw  # the body's JSON text as stored (handed to the check helpers as is)
        self._body: dict[str, Any] | None = None

    @property
    def body(self) -> dict[str, Any]:
        if self._body is None:
            self._body = dict(loads(self.raw))
        return self._body

    @property
    def queue_key(self) -> str:
        """Entries with one key are processed in order, one at a time."""
        return self.room_id if self.room_id is not None else f"edu {self.origin}"


@dataclass(frozen=True, slots=True)
class PendingPdu:
    """A PDU accepted at the door: its room, ID and room version are known."""

    room_id: str
    event_id: str
    room_version: str
    pdu: dict[str, Any]
    text: str | None = None  # the PDU's JSON, when the door has it already


@dataclass(frozen=True, slots=True)
class Admitted:
    response: dict[str, Any]
    repeated: bool  # the (origin, txnId) was seen before; nothing was enqueued
    enqueued: int
    held: set[str]  # PDUs we hold already (echoes)
    queued: set[str]  # PDUs already waiting in the inbox


# A claim on SQLite runs on the event loop's thread; on PostgreSQL it is a round trip.
CLAIM_PIECE_SQLITE = 25
CLAIM_PIECE_POSTGRES = 100

_COLUMNS = "id, origin, kind, room_id, event_id, room_version, body"


# Runs of the PostgreSQL door's statement when concurrent /sends enqueue the same PDUs.
ADMIT_ATTEMPTS = 3

# The PostgreSQL door's one statement (InboxStore._admit_one_statement): placeholders $n
# (several are used twice); the SQL has no "?".
_ADMIT_SQL = (
    "WITH prior AS (SELECT response FROM federation_transactions WHERE origin = $1 AND txn_id = $2),"
    " t AS (INSERT INTO federation_transactions (origin, txn_id, response, received_ts)"
    "  VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING 1),"
    " p AS (SELECT * FROM unnest($5::text[], $6::text[], $7::text[], $8::text[])"
    "  WITH ORDINALITY AS u(room_id, event_id, room_version, body, n)),"
    # Look-ups by the unique event_id index (a join with p may scan the table).
    " held AS (SELECT event_id FROM events WHERE event_id = ANY($6::text[]) AND outcome <> $10),"
    " queued AS (SELECT event_id FROM inbox WHERE event_id = ANY($6::text[])"
    "  AND event_id NOT IN (SELECT event_id FROM held)),"
    # Ordered by position: the inbox id orders a room's events for the worker.
    " ins AS (INSERT INTO inbox (origin, kind, room_id, event_id, room_version, body, received_ts)"
    "  SELECT $1, 'pdu', p.room_id, p.event_id, p.room_version, p.body, $4 FROM p"
    "  WHERE EXISTS (SELECT 1 FROM t) AND p.event_id NOT IN (SELECT event_id FROM held)"
    # No ON CONFLICT: its speculative insertion was 0.3 of the statement's 0.8 ms. A PDU
    # enqueued by a concurrent /send after our look-up fails the whole statement (it wrote
    # nothing), which is run again and then sees it queued (``_admit_one_statement``).
    "  AND p.event_id NOT IN (SELECT event_id FROM queued) ORDER BY p.n RETURNING 1),"
    " edu AS (INSERT INTO inbox (origin, kind, body, received_ts)"
    "  SELECT $1, 'edu', x.body, $4 FROM unnest($9::text[]) WITH ORDINALITY AS x(body, n)"
    "  WHERE EXISTS (SELECT 1 FROM t) ORDER BY x.n RETURNING 1)"
    " SELECT 't', response FROM prior"
    " UNION ALL SELECT 'e', event_id FROM held"
    " UNION ALL SELECT 'q', event_id FROM queued"
    " UNION ALL SELECT 'n', ((SELECT count(*) FROM ins) + (SELECT count(*) FROM edu))::text"
    " UNION ALL SELECT 'i', count(*)::text FROM t"
)


def _entry(row: Sequence[Any]) -> InboxEntry:
    return InboxEntry(int(row[0]), row[1], row[2], row[3], row[4], row[5], row[6])


class InboxStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        # Most entries one claim statement takes (see InboundWorker._claim_round).
        self.claim_piece = CLAIM_PIECE_POSTGRES if db.engine == "postgres" else CLAIM_PIECE_SQLITE
        # Entries claimed and not yet deleted or released, per origin (see ``claim``).
        self._held: dict[str, set[int]] = {}

    async def admit(
        self,
        origin: str,
        txn_id: str,
        response: dict[str, Any],
        pdus: Sequence[PendingPdu],
        edus: Sequence[dict[str, Any]],
    ) -> Admitted:
        """The door's one database transaction: if (origin, txn_id) was seen, return its
        first reply and enqueue nothing; otherwise record it with ``response`` and enqueue
        the PDUs we neither hold (an outlier is not held: the worker takes it in) nor have
        queued already, and the EDUs. Events whose writes the worker has deferred are not
        seen here: they are enqueued again and skipped by the worker, which knows them."""
        now = _now_ms()
        texts = [p.text if p.text is not None else _dumps(p.pdu) for p in pdus]
        if self.db.engine == "postgres":
            return await self._admit_one_statement(origin, txn_id, response, pdus, texts, edus, now)
        edu_rows = [(origin, _dumps(e), now) for e in edus]
        ids = list(dict.fromkeys(p.event_id for p in pdus))

        async def work(conn: Connection) -> Admitted:
            sql = "SELECT 't', response FROM federation_transactions WHERE origin = ? AND txn_id = ?"
            args: list[Any] = [origin, txn_id]
            if ids:
                marks = ",".join("?" * len(ids))
                sql += (
                    f" UNION ALL SELECT 'e' || event_id, outcome FROM events WHERE event_id IN ({marks})"
                    f" UNION ALL SELECT 'q' || event_id, NULL FROM inbox WHERE event_id IN ({marks})"
                )
                args += ids + ids
            held: set[str] = set()
            queued: set[str] = set()
            for key, value in await conn.fetchall(sql, *args):
                if key == "t":
                    return Admitted(dict(loads(value)), True, 0, set(), set())
                if key.startswith("e"):
                    if value != Outcome.OUTLIER.value:
                        held.add(key[1:])
                else:
                    queued.add(key[1:])
            queued -= held
            await conn.execute(
                "INSERT INTO federation_transactions (origin, txn_id, response, received_ts) VALUES (?, ?, ?, ?)",
                origin, txn_id, _dumps(response), now,
            )
            rows = [
                (origin, p.room_id, p.event_id, p.room_version, text, now)
                for p, text in zip(pdus, texts, strict=True)
                if p.event_id not in held and p.event_id not in queued
            ]
            if rows:
                # ON CONFLICT: one event twice in the transaction.
                await conn.executemany(
                    "INSERT INTO inbox (origin, kind, room_id, event_id, room_version, body,"
                    " received_ts) VALUES (?, 'pdu', ?, ?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING",
                    rows,
                )
            if edu_rows:
                await conn.executemany(
                    "INSERT INTO inbox (origin, kind, body, received_ts) VALUES (?, 'edu', ?, ?)", edu_rows
                )
            return Admitted(response, False, len(rows) + len(edu_rows), held, queued)

        try:
            return await self.db.independent_transaction(work, durable=True)
        except Exception as e:
            if not is_unique_violation(e):
                raise
            # The same (origin, txn_id) admitted concurrently (PostgreSQL): a repeat.
            raw = await self.db.fetchval(
                "SELECT response FROM federation_transactions WHERE origin = ? AND txn_id = ?", origin, txn_id
            )
            return Admitted(dict(loads(raw)), True, 0, set(), set())

    async def _admit_one_statement(
        self,
        origin: str,
        txn_id: str,
        response: dict[str, Any],
        pdus: Sequence[PendingPdu],
        texts: Sequence[str],
        edus: Sequence[dict[str, Any]],
        now: int,
    ) -> Admitted:
        """PostgreSQL: ``admit`` as ONE statement (data-modifying CTEs; a statement is its
        own transaction), one round trip instead of five: under load each round trip waits
        for a turn of a busy event loop and of a busy CPU."""
        first: dict[str, tuple[PendingPdu, str]] = {}
        for pdu, text in zip(pdus, texts, strict=True):
            first.setdefault(pdu.event_id, (pdu, text))
        unique = list(first.values())
        args = (
            origin, txn_id, _dumps(response), now,
            [p.room_id for p, _ in unique], [p.event_id for p, _ in unique],
            [p.room_version for p, _ in unique], [text for _, text in unique],
            [_dumps(e) for e in edus], Outcome.OUTLIER.value,
        )
        attempt = 1
        while True:
            try:
                rows = await self.db.fetchall_prepared(_ADMIT_SQL, *args)
                break
            except Exception as e:
                # Two /sends enqueueing the same PDUs at once: one fails on the inbox's
                # unique key (or, with the PDUs in another order, in a deadlock), having
                # written nothing; run again, it finds them queued.
                if attempt >= ADMIT_ATTEMPTS or not (is_unique_violation(e) or is_deadlock(e)):
                    raise
                attempt += 1
        found: dict[str, str | None] = {"t": None, "n": "0", "i": "0"}
        held: set[str] = set()
        queued: set[str] = set()
        for key, value in rows:
            if key == "e":
                held.add(value)
            elif key == "q":
                queued.add(value)
            else:
                found[key] = value
        if found["t"] is not None:
            return Admitted(dict(loads(found["t"])), True, 0, set(), set())
        if found["i"] == "0":
            # The same (origin, txnId) was admitted concurrently: a repeat.
            again = await self.db.fetchall_prepared(
                "SELECT response FROM federation_transactions WHERE origin = ? AND txn_id = ?", origin, txn_id
            )
            return Admitted(dict(loads(again[0][0])), True, 0, set(), set())
        return Admitted(response, False, int(found["n"] or 0), held, queued)

    def reset_claims(self) -> None:
        """Forget every claim (a worker starting: nothing is held)."""
        self._held.clear()

    async def origins_with_entries(self) -> set[str]:
        rows = await self.db.fetchall("SELECT DISTINCT origin FROM inbox")
        return {r[0] for r in rows}

    async def count(self) -> int:
        return int(await self.db.fetchval("SELECT COUNT(*) FROM inbox") or 0)

    async def claim(self, origin: str, limit: int, exclude_keys: Sequence[str]) -> list[InboxEntry]:
        """Claim the oldest ``limit`` entries of ``origin`` that are not held already,
        outside the rooms in ``exclude_keys`` (rooms whose in-memory queue is full).

        Claims are the worker's, in memory (one worker per database): the entries held are
        left out of the walk, and held until ``delete`` or ``release``. Nothing is written,
        so a claim is a plain read. Not a floor under the ids: on PostgreSQL concurrent
        /sends commit their entries out of id order."""
        held = self._held.setdefault(origin, set())
        postgres = self.db.engine == "postgres"
        sql = f"SELECT {_COLUMNS} FROM inbox WHERE origin = ?"
        args: list[Any] = [origin]
        if held and postgres:
            # One parameter (here an array, on SQLite a JSON list): the same statement text
            # whatever the count, and no limit on the number of parameters.
            sql += " AND id <> ALL(?::bigint[])"
            args.append(sorted(held))
        elif held:
            sql += " AND id NOT IN (SELECT value FROM json_each(?))"
            args.append(_dumps(sorted(held)))
        rooms = [k for k in exclude_keys if not k.startswith("edu ")]
        if rooms:
            sql += f" AND (room_id IS NULL OR room_id NOT IN ({','.join('?' * len(rooms))}))"
            args += rooms
        sql += " ORDER BY id LIMIT ?"
        args.append(limit)
        if postgres:

            async def work(conn: Connection) -> list[Row]:
                # The index (origin, id) gives the oldest entries in order. Before the inbox
                # table is first analyzed (a new server's first backlog) the planner believes
                # a couple of rows match, and sorted every entry, bodies and all, for each
                # claim: 35 ms at 10,000 entries instead of 1.
                await conn.execute("SET LOCAL enable_sort = off; SET LOCAL enable_bitmapscan = off")
                return await conn.fetchall(sql, *args)

            rows = await self.db.independent_transaction(work)
        else:
            # The inbox does not depend on the worker's deferred event writes: no waiting.
            rows = await self.db.fetchall_independent(sql, *args)
        entries = [_entry(r) for r in rows]
        held.update(e.id for e in entries)
        return entries

    def release(self, entries: Sequence[tuple[int, str]]) -> None:
        """Give claimed entries (id, origin) back: they are claimed and processed again."""
        for entry_id, origin in entries:
            self._held.get(origin, set()).discard(entry_id)

    async def delete(self, entries: Sequence[tuple[int, str]]) -> None:
        """Delete processed entries (id, origin): their events are committed (the worker
        deletes an entry only once its commit has landed). They stay held until deleted."""
        ids = [i for i, _ in entries]

        async def work(conn: Connection) -> None:
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                await conn.execute(f"DELETE FROM inbox WHERE id IN ({','.join('?' * len(chunk))})", *chunk)

        await self.db.independent_transaction(work)
        self.release(entries)

    async def settle(self) -> None:
        """Wait for the commits of writes deferred so far."""
        await self.db.flush_deferred()

    async def prune_transactions(self, older_than_ms: int) -> int:
        return await self.db.execute(
            "DELETE FROM federation_transactions WHERE received_ts < ?", older_than_ms
        )


# Processes one entry; a future returned resolves once what it stored is committed (the
# entry is deleted then, or handed back to the inbox if the commit failed).
Processor = Callable[[InboxEntry], Awaitable["asyncio.Future[None] | None"]]

# Processed entries are deleted in batches of this size while the worker is busy.
DELETE_BATCH = 50
# Longest the worker holds back for /send requests being answered, each time.
DOOR_YIELD_SECONDS = 0.05
# How long a knock (a /send's first bytes read) holds the worker back if no handler follows.
KNOCK_SECONDS = 0.02


class InboundWorker:
    """Drains the inbox; ``notify`` wakes it after /send enqueued something."""

    def __init__(
        self, store: InboxStore, process: Processor, config: InboundConfig, metrics: Metrics
    ) -> None:
        self._store = store
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
        self._last_answered = 0.0  # time.monotonic() when the last /send was answered
        self._door_clear = asyncio.Event()
        self._door_clear.set()
        self._knock: asyncio.TimerHandle | None = None  # a /send on its way to its handler
        self.knocks = 0  # since start (observability, tests)
        # Group commits of deferred writes hold back too while a reply is being written.
        store.db.set_group_commit_gate(self._door_clear)

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
        self._end_knock()
        main, self._main = self._main, None
        if main is not None:
            main.cancel()
            await asyncio.wait([main], timeout=STOP_TIMEOUT_SECONDS)
        deadline = time.monotonic() + SHUTDOWN_GRACE_SECONDS
        while self._running and time.monotonic() < deadline:
            # A finishing room starts the next waiting room: wait for those too.
            await asyncio.wait(list(self._running.values()), timeout=deadline - time.monotonic())
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
        self._end_knock()
        try:
            yield
        finally:
            self._door -= 1
            self._last_answered = time.monotonic()
            if not self._door and self._knock is None:
                self._door_clear.set()

    def knock(self) -> None:
        """The first bytes of a /send were read: hold back from now on, not only once its
        handler runs (``answering``), for at most KNOCK_SECONDS if no handler comes."""
        self.knocks += 1
        self._door_clear.clear()
        self._end_knock()
        self._knock = asyncio.get_running_loop().call_later(KNOCK_SECONDS, self._knock_expired)

    @property
    def holding_back(self) -> bool:
        """Whether the worker holds back now (for a /send being read or answered)."""
        return not self._door_clear.is_set()

    def _end_knock(self) -> None:
        if self._knock is not None:
            self._knock.cancel()
            self._knock = None

    def _knock_expired(self) -> None:
        self._knock = None
        if not self._door:
            self._door_clear.set()

    def quiet(self, seconds: float) -> bool:
        """Nothing to do and no /send answered for ``seconds`` (see gcpolicy)."""
        return (self.idle and not self._door and self._knock is None
                and time.monotonic() - self._last_answered >= seconds)

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
        """Wait until the inbox is drained; False if ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        while not self.idle or self._done:
            if time.monotonic() >= deadline:
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
                    try:
                        async with asyncio.timeout(IDLE_POLL_SECONDS):
                            await self._wake.wait()
                    except TimeoutError:
                        # Another process may have written entries (PostgreSQL).
                        for origin in await self._store.origins_with_entries():
                            self._add_origin(origin)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("inbound worker loop failed; retrying")
                await asyncio.sleep(1.0)

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
        ids, self._done = self._done, []
        try:
            await self._store.delete(ids)
        except BaseException:
            self._done[:0] = ids  # still held: deleted next time
            raise
        self._metrics.inbox_depth.dec(len(ids))

    async def _maybe_prune(self) -> None:
        now = time.monotonic()
        if now - self._last_prune < PRUNE_INTERVAL_SECONDS:
            return
        self._last_prune = now
        cutoff = _now_ms() - self._config.transaction_retention_seconds * 1000
        await self._store.prune_transactions(cutoff)
