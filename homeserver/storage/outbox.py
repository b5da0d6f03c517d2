"""The outbox store: the durable per-destination queues of outbound PDUs and EDUs and each
destination's retry state (storage/schema/0004_outbound). Every statement of the outbound
sender lives here; the sender decides, this store reads and writes.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from homeserver.storage.database import Connection, Database, Row


@dataclass(slots=True)
class DestinationState:
    """One row of ``outbound_destinations``."""

    destination: str
    failure_count: int
    first_failure_ts: int | None
    retry_interval_ms: int
    next_attempt_ts: int
    dead: bool
    catch_up: bool
    last_txn_id: int
    pending_txn_id: str | None
    pending_pdu_max: int | None
    pending_edu_max: int | None


@dataclass(frozen=True, slots=True)
class Batch:
    """What one /send carries: its txnId and the queue rows it empties once acknowledged."""

    txn_id: str
    pdu_rows: list[tuple[int, str, dict[str, Any]]]  # (queue_id, event_id, pdu)
    edu_rows: list[tuple[int, dict[str, Any]]]  # (queue_id, {"edu_type", "content"})


_STATE_COLUMNS = (
    "destination, failure_count, first_failure_ts, retry_interval_ms, next_attempt_ts, dead,"
    " catch_up, last_txn_id, pending_txn_id, pending_pdu_max, pending_edu_max"
)
_STATE_SQL = f"SELECT {_STATE_COLUMNS} FROM outbound_destinations WHERE destination = ?"


def _state_from_row(row: Row) -> DestinationState:
    return DestinationState(
        destination=row[0],
        failure_count=int(row[1]),
        first_failure_ts=None if row[2] is None else int(row[2]),
        retry_interval_ms=int(row[3]),
        next_attempt_ts=int(row[4]),
        dead=bool(row[5]),
        catch_up=bool(row[6]),
        last_txn_id=int(row[7]),
        pending_txn_id=row[8],
        pending_pdu_max=None if row[9] is None else int(row[9]),
        pending_edu_max=None if row[10] is None else int(row[10]),
    )


def _encode(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class OutboxStore:
    def __init__(self, db: Database, *, durable_edu_types: Sequence[str] = ()) -> None:
        """``durable_edu_types``: EDU types a catch-up collapse keeps (to-device messages:
        losing one loses a room key), trimmed only among themselves."""
        self.db = db
        self.durable_edu_types = tuple(durable_edu_types)

    # ------------------------------------------------------------------ enqueueing

    async def add_event(
        self, conn: Connection, event_id: str, room_id: str, pdu: dict[str, Any], queued_ts: int,
        destinations: Sequence[str], catching_up: Collection[str],
    ) -> None:
        """Queue our event for ``destinations`` in ``conn``'s transaction. A destination in
        ``catching_up`` keeps only our newest event of each room: its older one goes."""
        await conn.execute(
            "INSERT INTO outbound_pdus (event_id, room_id, json, queued_ts) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (event_id) DO NOTHING",
            event_id,
            room_id,
            _encode(pdu),
            queued_ts,
        )
        for dest in destinations:
            if dest in catching_up:
                await conn.execute(
                    "DELETE FROM outbound_pdu_queue WHERE destination = ? AND room_id = ?", dest, room_id
                )
        await conn.executemany(
            "INSERT INTO outbound_pdu_queue (destination, event_id, room_id) VALUES (?, ?, ?)"
            " ON CONFLICT (destination, event_id) DO NOTHING",
            [(dest, event_id, room_id) for dest in destinations],
        )

    async def add_edu(
        self, conn: Connection, destinations: Sequence[str], edu_type: str, content: Any, queued_ts: int,
        trimmed: Collection[str], keep: int,
    ) -> None:
        """Queue one EDU per destination in ``conn``'s transaction; a destination in
        ``trimmed`` keeps only its newest ``keep`` EDUs of the same class (durable types
        and the others are trimmed separately)."""
        body = _encode(content)
        dialect = self.db.dialect
        if edu_type in self.durable_edu_types:
            same_class, class_args = dialect.in_list("edu_type", self.durable_edu_types)
        else:
            same_class, class_args = dialect.not_in_list("edu_type", self.durable_edu_types)
        for dest in destinations:
            await conn.execute(
                "INSERT INTO outbound_edu_queue (destination, edu_type, content, queued_ts) VALUES (?, ?, ?, ?)",
                dest,
                edu_type,
                body,
                queued_ts,
            )
            if dest in trimmed:
                await conn.execute(
                    f"DELETE FROM outbound_edu_queue WHERE destination = ? AND {same_class} AND queue_id <= ("
                    f"SELECT queue_id FROM outbound_edu_queue WHERE destination = ? AND {same_class}"
                    " ORDER BY queue_id DESC LIMIT 1 OFFSET ?)",
                    dest,
                    *class_args,
                    dest,
                    *class_args,
                    keep,
                )

    # ------------------------------------------------------------------ destinations

    async def troubled_destinations(self) -> list[tuple[str, bool, bool, int]]:
        """(destination, dead, catch_up, failure_count) of every destination not healthy."""
        rows = await self.db.fetchall(
            "SELECT destination, dead, catch_up, failure_count FROM outbound_destinations"
            " WHERE dead = 1 OR catch_up = 1 OR failure_count > 0"
        )
        return [(str(d), bool(dead), bool(catch_up), int(f)) for d, dead, catch_up, f in rows]

    async def destinations_with_queue(self) -> list[str]:
        rows = await self.db.fetchall(
            "SELECT DISTINCT destination FROM outbound_pdu_queue"
            " UNION SELECT DISTINCT destination FROM outbound_edu_queue"
        )
        return [str(d) for (d,) in rows]

    async def get_state(self, destination: str) -> DestinationState | None:
        row = await self.db.fetchone(_STATE_SQL, destination)
        return None if row is None else _state_from_row(row)

    async def load_state(self, destination: str) -> DestinationState:
        """The destination's retry state, its row created (healthy) if missing."""
        row = await self.db.fetchone(_STATE_SQL, destination)
        if row is None:
            await self.db.execute(
                "INSERT INTO outbound_destinations (destination) VALUES (?) ON CONFLICT (destination) DO NOTHING",
                destination,
            )
            row = await self.db.fetchone(_STATE_SQL, destination)
            assert row is not None
        return _state_from_row(row)

    async def retry_now(self, destination: str) -> None:
        """The destination contacted us: no longer dead, next attempt at once."""
        await self.db.execute(
            "UPDATE outbound_destinations SET next_attempt_ts = 0, dead = 0 WHERE destination = ?",
            destination,
        )

    async def queue_depth(self, destination: str) -> tuple[int, int]:
        """(queued PDUs, queued EDUs) of the destination."""
        pdus = await self.db.fetchval(
            "SELECT COUNT(*) FROM outbound_pdu_queue WHERE destination = ?", destination
        )
        edus = await self.db.fetchval(
            "SELECT COUNT(*) FROM outbound_edu_queue WHERE destination = ?", destination
        )
        return int(pdus), int(edus)

    async def pdu_queue_extent(self, destination: str) -> tuple[int, int | None]:
        """(queued PDUs, when the oldest of them was queued, or None) of the destination."""
        row = await self.db.fetchone(
            "SELECT COUNT(*), MIN(p.queued_ts) FROM outbound_pdu_queue q"
            " JOIN outbound_pdus p ON p.event_id = q.event_id WHERE q.destination = ?",
            destination,
        )
        assert row is not None
        return int(row[0]), None if row[1] is None else int(row[1])

    async def drop_unqueued_events(self) -> None:
        """Forget our events no destination waits for any more (collapsed queues leave some)."""
        await self.db.execute(
            "DELETE FROM outbound_pdus WHERE NOT EXISTS"
            " (SELECT 1 FROM outbound_pdu_queue q WHERE q.event_id = outbound_pdus.event_id)"
        )

    # ------------------------------------------------------------------ transactions

    async def queued_pdus(
        self, destination: str, limit: int, upto: int | None = None
    ) -> list[tuple[int, str, dict[str, Any]]]:
        """The oldest queued PDUs (queue_id, event_id, pdu), up to queue id ``upto`` if given."""
        sql = (
            "SELECT q.queue_id, q.event_id, p.json FROM outbound_pdu_queue q"
            " JOIN outbound_pdus p ON p.event_id = q.event_id WHERE q.destination = ?"
        )
        args: list[Any] = [destination]
        if upto is not None:
            sql += " AND q.queue_id <= ?"
            args.append(upto)
        rows = await self.db.fetchall(sql + " ORDER BY q.queue_id LIMIT ?", *args, limit)
        return [(int(qid), str(eid), json.loads(raw)) for qid, eid, raw in rows]

    async def queued_edus(
        self, destination: str, limit: int, upto: int | None = None
    ) -> list[tuple[int, dict[str, Any]]]:
        """The oldest queued EDUs (queue_id, {"edu_type", "content"}), up to ``upto`` if given."""
        sql = "SELECT queue_id, edu_type, content FROM outbound_edu_queue WHERE destination = ?"
        args: list[Any] = [destination]
        if upto is not None:
            sql += " AND queue_id <= ?"
            args.append(upto)
        rows = await self.db.fetchall(sql + " ORDER BY queue_id LIMIT ?", *args, limit)
        return [(int(qid), {"edu_type": t, "content": json.loads(raw)}) for qid, t, raw in rows]

    async def begin_transaction(self, destination: str, txn_id: int, pdu_max: int, edu_max: int) -> None:
        """Record the transaction about to be in flight (retried as it is until acknowledged)."""
        await self.db.execute(
            "UPDATE outbound_destinations SET last_txn_id = ?, pending_txn_id = ?, pending_pdu_max = ?,"
            " pending_edu_max = ? WHERE destination = ?",
            txn_id,
            str(txn_id),
            pdu_max,
            edu_max,
            destination,
        )

    async def clear_pending(self, destination: str) -> None:
        await self.db.execute(
            "UPDATE outbound_destinations SET pending_txn_id = NULL, pending_pdu_max = NULL,"
            " pending_edu_max = NULL WHERE destination = ?",
            destination,
        )

    async def delivered(self, destination: str, batch: Batch, now_ms: int) -> None:
        """The destination acknowledged ``batch``: its rows leave the queue, the destination
        is healthy again, and events no other destination waits for are forgotten."""
        pdu_ids = [qid for qid, _, _ in batch.pdu_rows]
        event_ids = [eid for _, eid, _ in batch.pdu_rows]
        edu_ids = [qid for qid, _ in batch.edu_rows]
        dialect = self.db.dialect
        async with self.db.transaction() as conn:
            if pdu_ids:
                cond, args = dialect.in_list("queue_id", pdu_ids)
                await conn.execute(
                    f"DELETE FROM outbound_pdu_queue WHERE destination = ? AND {cond}", destination, *args
                )
            if edu_ids:
                cond, args = dialect.in_list("queue_id", edu_ids)
                await conn.execute(
                    f"DELETE FROM outbound_edu_queue WHERE destination = ? AND {cond}", destination, *args
                )
            await conn.execute(
                "UPDATE outbound_destinations SET failure_count = 0, first_failure_ts = NULL,"
                " retry_interval_ms = 0, next_attempt_ts = 0, dead = 0, catch_up = 0,"
                " pending_txn_id = NULL, pending_pdu_max = NULL, pending_edu_max = NULL,"
                " last_success_ts = ? WHERE destination = ?",
                now_ms,
                destination,
            )
        if event_ids:
            # After the commit: of two destinations finishing the same event at once, the
            # later one sees both queues empty (inside the transaction, neither would).
            cond, args = dialect.in_list("event_id", event_ids)
            await self.db.execute(
                f"DELETE FROM outbound_pdus WHERE {cond} AND NOT EXISTS"
                " (SELECT 1 FROM outbound_pdu_queue q WHERE q.event_id = outbound_pdus.event_id)",
                *args,
            )

    async def failed(
        self, destination: str, first_failure_ts: int, interval_ms: int, next_attempt_ts: int, dead: bool,
        collapse: bool,
    ) -> None:
        """Record one more failure (and collapse the queue to catch-up markers, in the same
        transaction, if ``collapse``)."""
        async with self.db.transaction() as conn:
            await conn.execute(
                "UPDATE outbound_destinations SET failure_count = failure_count + 1, first_failure_ts = ?,"
                " retry_interval_ms = ?, next_attempt_ts = ?, dead = ? WHERE destination = ?",
                first_failure_ts,
                interval_ms,
                next_attempt_ts,
                1 if dead else 0,
                destination,
            )
            if collapse:
                await self._collapse(conn, destination, self.durable_edu_types)

    async def collapse(self, destination: str) -> None:
        """Put the destination in catch-up (see ``_collapse``)."""
        async with self.db.transaction() as conn:
            await self._collapse(conn, destination, self.durable_edu_types)

    async def _collapse(self, conn: Connection, destination: str, durable_edu_types: Sequence[str]) -> None:
        """Shrink the queue to the catch-up marker: our newest event of each room; drop the
        EDUs but the durable ones."""
        await conn.execute(
            "DELETE FROM outbound_pdu_queue WHERE destination = ? AND queue_id NOT IN"
            " (SELECT MAX(queue_id) FROM outbound_pdu_queue WHERE destination = ? GROUP BY room_id)",
            destination,
            destination,
        )
        others, args = self.db.dialect.not_in_list("edu_type", durable_edu_types)
        await conn.execute(f"DELETE FROM outbound_edu_queue WHERE destination = ? AND {others}", destination, *args)
        await conn.execute(
            "UPDATE outbound_destinations SET catch_up = 1, pending_txn_id = NULL, pending_pdu_max = NULL,"
            " pending_edu_max = NULL WHERE destination = ?",
            destination,
        )
