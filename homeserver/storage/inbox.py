"""The durable inbox of inbound federation: what ``PUT /send`` writes and the inbound
worker claims, processes and deletes (``homeserver.federation.worker``).

The (origin, txnId) de-duplication row and the transaction's PDUs and EDUs go into the
database in ONE transaction, and the row's primary key makes a concurrent repeat of the
same transaction enqueue nothing (the second insert of the de-duplication row finds the
first and returns its stored reply). A PDU already in the inbox (``inbox.event_id`` is
unique) is not enqueued twice. Each engine's statements are chosen once, in ``InboxStore``.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from homeserver.events.canonical import loads_exact
from homeserver.storage.database import Connection, Database, Row
from homeserver.storage.events import Outcome
from homeserver.util.clock import SYSTEM_CLOCK, Clock


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
            self._body = dict(loads_exact(self.raw))
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


# Runs of the PostgreSQL door's statement when concurrent /sends enqueue the same PDUs; after
# a deadlock the next run waits a little (random, up to DEADLOCK_BACKOFF seconds), so the other
# transaction, woken by our abort, takes the key first instead of deadlocking with us again.
ADMIT_ATTEMPTS = 5
DEADLOCK_BACKOFF = 0.05

# The PostgreSQL door's one statement (InboxStore._admit_one_statement): placeholders $n
# (several are used twice); the SQL has no "?".
ADMIT_SQL_POSTGRES = (
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

_PRIOR_RESPONSE_SQL = "SELECT response FROM federation_transactions WHERE origin = ? AND txn_id = ?"


def _entry(row: Sequence[Any]) -> InboxEntry:
    return InboxEntry(int(row[0]), row[1], row[2], row[3], row[4], row[5], row[6])


class InboxStore:
    """The inbox's statements, and the worker's claims on its entries (held in memory)."""

    def __init__(self, db: Database, clock: Clock = SYSTEM_CLOCK) -> None:
        self.db = db
        self._clock = clock
        self._dialect = db.dialect
        # Each engine's door and claim, chosen once.
        postgres = db.dialect.name == "postgres"
        self._admit: Callable[
            [str, str, dict[str, Any], Sequence[PendingPdu], Sequence[str], Sequence[dict[str, Any]], int],
            Awaitable[Admitted],
        ] = self._admit_one_statement if postgres else self._admit_transaction
        self._claim_rows: Callable[[str, Sequence[Any]], Awaitable[list[Row]]] = (
            self._claim_rows_postgres if postgres else self._claim_rows_independent
        )
        # Most entries one claim statement takes (see InboundWorker._claim_round).
        self.claim_piece = CLAIM_PIECE_POSTGRES if postgres else CLAIM_PIECE_SQLITE
        # Entries claimed and not yet deleted or released, per origin (see ``claim``).
        self._held: dict[str, set[int]] = {}

    def set_group_commit_gate(self, gate: asyncio.Event) -> None:
        """Group commits of deferred writes start only while ``gate`` is set (or after a
        short wait): the worker closes it while a /send is being answered."""
        self.db.set_group_commit_gate(gate)

    # ------------------------------------------------------------------ the door

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
        now = self._clock.time_ms()
        texts = [p.text if p.text is not None else _dumps(p.pdu) for p in pdus]
        return await self._admit(origin, txn_id, response, pdus, texts, edus, now)

    async def _admit_transaction(
        self,
        origin: str,
        txn_id: str,
        response: dict[str, Any],
        pdus: Sequence[PendingPdu],
        texts: Sequence[str],
        edus: Sequence[dict[str, Any]],
        now: int,
    ) -> Admitted:
        """SQLite: ``admit`` as one transaction on the independent connection."""
        edu_rows = [(origin, _dumps(e), now) for e in edus]
        ids = list(dict.fromkeys(p.event_id for p in pdus))

        async def work(conn: Connection) -> Admitted:
            sql = "SELECT 't', response FROM federation_transactions WHERE origin = ? AND txn_id = ?"
            args: list[Any] = [origin, txn_id]
            if ids:
                # The tuned door: one statement for the three look-ups (kept as measured).
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
                    return Admitted(dict(loads_exact(value)), True, 0, set(), set())
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
            if not self._dialect.is_unique_violation(e):
                raise
            # The same (origin, txn_id) admitted concurrently: a repeat.
            raw = await self.db.fetchval(_PRIOR_RESPONSE_SQL, origin, txn_id)
            return Admitted(dict(loads_exact(raw)), True, 0, set(), set())

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
                rows = await self.db.fetchall_prepared(ADMIT_SQL_POSTGRES, *args)
                break
            except Exception as e:
                # Two /sends enqueueing the same PDUs at once: one fails on the inbox's
                # unique key (or, with the PDUs in another order, in a deadlock), having
                # written nothing; run again, it finds them queued.
                deadlock = self._dialect.is_deadlock(e)
                if attempt >= ADMIT_ATTEMPTS or not (deadlock or self._dialect.is_unique_violation(e)):
                    raise
                attempt += 1
                if deadlock:
                    await self._clock.sleep(random.uniform(DEADLOCK_BACKOFF / 5, DEADLOCK_BACKOFF))
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
            return Admitted(dict(loads_exact(found["t"])), True, 0, set(), set())
        if found["i"] == "0":
            # The same (origin, txnId) was admitted concurrently: a repeat.
            again = await self.db.fetchall_prepared(_PRIOR_RESPONSE_SQL, origin, txn_id)
            return Admitted(dict(loads_exact(again[0][0])), True, 0, set(), set())
        return Admitted(response, False, int(found["n"] or 0), held, queued)

    # ------------------------------------------------------------------ the worker's side

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
        sql = f"SELECT {_COLUMNS} FROM inbox WHERE origin = ?"
        args: list[Any] = [origin]
        if held:
            # One parameter (an array, or a JSON list): the same statement text whatever
            # the count, and no limit on the number of parameters.
            cond, cond_args = self._dialect.not_in_list("id", sorted(held))
            sql += f" AND {cond}"
            args += cond_args
        rooms = [k for k in exclude_keys if not k.startswith("edu ")]
        if rooms:
            cond, cond_args = self._dialect.not_in_list("room_id", rooms)
            sql += f" AND (room_id IS NULL OR {cond})"
            args += cond_args
        sql += " ORDER BY id LIMIT ?"
        args.append(limit)
        rows = await self._claim_rows(sql, args)
        entries = [_entry(r) for r in rows]
        held.update(e.id for e in entries)
        return entries

    async def _claim_rows_postgres(self, sql: str, args: Sequence[Any]) -> list[Row]:
        async def work(conn: Connection) -> list[Row]:
            # The index (origin, id) gives the oldest entries in order. Before the inbox
            # table is first analyzed (a new server's first backlog) the planner believes
            # a couple of rows match, and sorted every entry, bodies and all, for each
            # claim: 35 ms at 10,000 entries instead of 1.
            await conn.execute("SET LOCAL enable_sort = off; SET LOCAL enable_bitmapscan = off")
            return await conn.fetchall(sql, *args)

        return await self.db.independent_transaction(work)

    async def _claim_rows_independent(self, sql: str, args: Sequence[Any]) -> list[Row]:
        # The inbox does not depend on the worker's deferred event writes: no waiting.
        return await self.db.fetchall_independent(sql, *args)

    def release(self, entries: Sequence[tuple[int, str]]) -> None:
        """Give claimed entries (id, origin) back: they are claimed and processed again."""
        for entry_id, origin in entries:
            self._held.get(origin, set()).discard(entry_id)

    async def delete(self, entries: Sequence[tuple[int, str]]) -> None:
        """Delete processed entries (id, origin): their events are committed (the worker
        deletes an entry only once its commit has landed). They stay held until deleted."""
        cond, args = self._dialect.in_list("id", [i for i, _ in entries])

        async def work(conn: Connection) -> None:
            await conn.execute(f"DELETE FROM inbox WHERE {cond}", *args)

        await self.db.independent_transaction(work)
        self.release(entries)

    async def settle(self) -> None:
        """Wait for the commits of writes deferred so far."""
        await self.db.flush_deferred()

    async def prune_transactions(self, older_than_ms: int) -> int:
        return await self.db.execute(
            "DELETE FROM federation_transactions WHERE received_ts < ?", older_than_ms
        )
