"""The outbound sender: the one way PDUs and EDUs leave this server.

Guarantees:

* Only our own events leave. ``OutboundSender.enqueue_event`` is the single entry point
  for PDUs; it refuses any event whose ``sender`` is not a user of this server (logged
  once per event, counted in ``hs_outbound_refused_relays``). ``enqueue_edu`` likewise
  accepts only typing, receipts, presence and device EDUs about our own users.
* Durable per-destination queues: an event is queued inside the database transaction that
  persists it (the persister's ``in_transaction`` hook), so a crash or restart loses
  nothing. Each destination has at most one transaction in flight, of at most 50 PDUs and
  100 EDUs, oldest first; a transaction that failed is retried with the same txnId and the
  same content, and txnIds never repeat for a destination.
* A failing destination backs off exponentially with jitter; the retry state lives in the
  database. Any authenticated request from it (``notify_destination_up``) retries it at
  once. Past ``outbound.dead_after_days`` of failures it is not tried at all and its queue
  shrinks to a catch-up marker: our newest event of each room. A destination whose queue
  grew past ``outbound.catch_up_threshold`` while failing is caught up the same way; the
  receiver fetches the gap with /get_missing_events.
* A slow or dead destination costs one worker task and at most one pooled connection for
  /send; it never delays any other destination.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from homeserver.config import OutboundConfig
from homeserver.events.event import Event, StateKey
from homeserver.events.identifiers import is_valid_server_name, server_name_of
from homeserver.metrics import Metrics
from homeserver.net.client import FederationClient, FederationRequestError
from homeserver.storage.database import Connection, Database

log = logging.getLogger(__name__)

# How long the wake-up after an enqueue waits for the enqueuing transaction to commit
# (a rolled-back transaction is never seen; the periodic sweep is the safety net).
COMMIT_WAIT_SECONDS = 5.0
REFUSED_LOG_MEMORY = 10_000
# 4xx replies to /send that no retry can fix: the batch is dropped (logged, counted).
PERMANENT_STATUSES = frozenset({400, 403, 405, 413, 414})

MemberState = Event | Mapping[str, Any]  # a member event, or just its content


# --------------------------------------------------------------------------- destinations


def _membership_of(value: MemberState) -> str | None:
    content = value.content if isinstance(value, Event) else value
    m = content.get("membership") if isinstance(content, Mapping) else None
    return m if isinstance(m, str) else None


def joined_servers(state: Mapping[StateKey, MemberState]) -> set[str]:
    """Servers with at least one joined member in ``state``."""
    servers: set[str] = set()
    for (etype, state_key), value in state.items():
        if etype == "m.room.member" and _membership_of(value) == "join":
            server = server_name_of(state_key)
            if server:
                servers.add(server)
    return servers


def destinations_for_event(
    event: Event,
    state_before: Mapping[StateKey, MemberState],
    state_after: Mapping[StateKey, MemberState] | None = None,
    *,
    server_name: str,
) -> set[str]:
    """The servers an event of ours goes to (pure).

    1. Every server with a joined member in the state before the event,
    2. and, for a join, in the state after it (the joining server hears about its join);
    3. for a membership event that targets another user (invite, kick, ban, a leave sent on
       someone's behalf), that user's server, even with no member left in the room;
    4. never ourselves.
    """
    # 1.
    servers = joined_servers(state_before)
    membership = event.membership if event.type == "m.room.member" else None
    # 2.
    if membership == "join" and state_after is not None:
        servers |= joined_servers(state_after)
    # 3.
    if event.type == "m.room.member" and event.state_key is not None:
        targets_other = event.state_key != event.sender
        if membership in ("invite", "ban") or (membership == "leave" and targets_other):
            target = server_name_of(event.state_key)
            if target:
                servers.add(target)
    # 4.
    servers.discard(server_name)
    return {s for s in servers if is_valid_server_name(s)}


# --------------------------------------------------------------------------- the sender


@dataclass(slots=True)
class DestinationState:
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
    txn_id: str
    pdu_rows: list[tuple[int, str, dict[str, Any]]]  # (queue_id, event_id, pdu)
    edu_rows: list[tuple[int, dict[str, Any]]]  # (queue_id, {"edu_type", "content"})


_STATE_COLUMNS = (
    "destination, failure_count, first_failure_ts, retry_interval_ms, next_attempt_ts, dead,"
    " catch_up, last_txn_id, pending_txn_id, pending_pdu_max, pending_edu_max"
)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _local_user(user_id: object, server_name: str) -> bool:
    return isinstance(user_id, str) and user_id.startswith("@") and server_name_of(user_id) == server_name


class OutboundSender:
    def __init__(
        self,
        server_name: str,
        db: Database,
        client: FederationClient,
        config: OutboundConfig,
        metrics: Metrics,
    ) -> None:
        self.server_name = server_name
        self.db = db
        self.client = client
        self.config = config
        self.metrics = metrics
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._wake: dict[str, asyncio.Event] = {}  # new items queued
        self._kick: dict[str, asyncio.Event] = {}  # retry now (destination came back)
        self._backoff: set[str] = set()  # failing or dead destinations
        self._catch_up: set[str] = set()  # destinations whose queue keeps one PDU per room
        self._dead: set[str] = set()
        self._depth: dict[str, tuple[int, int]] = {}  # destination -> (pdus, edus), last seen
        self._tasks: set[asyncio.Task[None]] = set()
        self._refused_logged: OrderedDict[str, None] = OrderedDict()
        self._sweeper: asyncio.Task[None] | None = None
        self._stopping = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Load retry state and start a worker for every destination with a queue."""
        rows = await self.db.fetchall(
            "SELECT destination, dead, catch_up, failure_count FROM outbound_destinations"
            " WHERE dead = 1 OR catch_up = 1 OR failure_count > 0"
        )
        for dest, dead, catch_up, failures in rows:
            if dead or failures:
                self._backoff.add(dest)
            if dead:
                self._dead.add(dest)
            if catch_up:
                self._catch_up.add(dest)
        self._update_gauges()
        await self._sweep()
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="outbound-sweeper")

    async def stop(self) -> None:
        """Cancel every worker and wait for them; queued items stay in the database."""
        self._stopping = True
        tasks = [*self._workers.values(), *self._tasks]
        if self._sweeper is not None:
            tasks.append(self._sweeper)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._workers.clear()
        self._tasks.clear()
        self._sweeper = None

    # ------------------------------------------------------------------ entry points

    async def enqueue_event(self, conn: Connection, event: Event, destinations: Iterable[str]) -> None:
        """Queue our event for ``destinations``, inside the caller's database transaction.

        The one entry point for outbound PDUs. An event whose sender is not a user of this
        server is refused (another server's event is never relayed).
        """
        if not _local_user(event.sender, self.server_name):
            self.metrics.refused_relays.inc()
            if event.event_id not in self._refused_logged:
                self._refused_logged[event.event_id] = None
                if len(self._refused_logged) > REFUSED_LOG_MEMORY:
                    self._refused_logged.popitem(last=False)
                log.warning(
                    "refused to send an event created by another server",
                    extra={"event_id": event.event_id, "sender": event.sender, "room_id": event.room_id},
                )
            return
        dests = sorted({d for d in destinations if d != self.server_name and is_valid_server_name(d)})
        if not dests:
            return
        await conn.execute(
            "INSERT INTO outbound_pdus (event_id, room_id, json, queued_ts) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (event_id) DO NOTHING",
            event.event_id,
            event.room_id,
            json.dumps(event.pdu, ensure_ascii=False, separators=(",", ":")),
            _now_ms(),
        )
        # A destination in catch-up keeps only our newest event of each room.
        for dest in dests:
            if dest in self._catch_up:
                await conn.execute(
                    "DELETE FROM outbound_pdu_queue WHERE destination = ? AND room_id = ?", dest, event.room_id
                )
        await conn.executemany(
            "INSERT INTO outbound_pdu_queue (destination, event_id, room_id) VALUES (?, ?, ?)"
            " ON CONFLICT (destination, event_id) DO NOTHING",
            [(dest, event.event_id, event.room_id) for dest in dests],
        )
        # Visible once committed; the events row (same transaction) is never deleted, so a
        # queue already drained by a running worker still counts as committed.
        self._wake_after_commit(
            "SELECT 1 FROM outbound_pdus WHERE event_id = ? UNION ALL SELECT 1 FROM events WHERE event_id = ?",
            (event.event_id, event.event_id),
            dests,
            pdus=1,
        )

    async def enqueue_edu(
        self,
        edu_type: str,
        content: Mapping[str, Any],
        destinations: Iterable[str],
        conn: Connection | None = None,
    ) -> bool:
        """Queue an EDU about our own users; return False (and count it) if refused.

        Accepted: m.typing, m.receipt, m.presence, m.direct_to_device, m.device_list_update
        whose users are all ours. Runs in ``conn``'s transaction when given.
        """
        if not self._edu_is_ours(edu_type, content):
            self.metrics.refused_edus.inc()
            log.warning("refused to send an EDU not about our own users", extra={"edu_type": edu_type})
            return False
        dests = sorted({d for d in destinations if d != self.server_name and is_valid_server_name(d)})
        dests = [d for d in dests if d not in self._catch_up]  # stale by the time it is back
        if not dests:
            return True
        body = json.dumps(content, ensure_ascii=False, separators=(",", ":"))
        if conn is None:
            async with self.db.transaction() as tx:
                marker = await self._insert_edus(tx, dests, edu_type, body)
        else:
            marker = await self._insert_edus(conn, dests, edu_type, body)
        self._wake_after_commit("SELECT 1 FROM outbound_edu_queue WHERE queue_id = ?", (marker,), dests, edus=1)
        return True

    async def _insert_edus(self, conn: Connection, dests: list[str], edu_type: str, body: str) -> int:
        """Insert one EDU row per destination; return the last queue id. A destination in
        backoff keeps only its newest ``max_queued_edus`` EDUs."""
        marker = 0
        now = _now_ms()
        for dest in dests:
            marker = int(
                await conn.fetchval(
                    "INSERT INTO outbound_edu_queue (destination, edu_type, content, queued_ts)"
                    " VALUES (?, ?, ?, ?) RETURNING queue_id",
                    dest,
                    edu_type,
                    body,
                    now,
                )
            )
            if dest in self._backoff:
                await conn.execute(
                    "DELETE FROM outbound_edu_queue WHERE destination = ? AND queue_id <= ("
                    "SELECT queue_id FROM outbound_edu_queue WHERE destination = ?"
                    " ORDER BY queue_id DESC LIMIT 1 OFFSET ?)",
                    dest,
                    dest,
                    self.config.max_queued_edus,
                )
        return marker

    def _edu_is_ours(self, edu_type: str, content: Mapping[str, Any]) -> bool:
        ours = self.server_name
        if edu_type == "m.typing":
            return _local_user(content.get("user_id"), ours)
        if edu_type == "m.receipt":
            users: list[object] = []
            for receipts in content.values():
                if not isinstance(receipts, Mapping):
                    return False
                for by_user in receipts.values():
                    if not isinstance(by_user, Mapping):
                        return False
                    users.extend(by_user.keys())
            return bool(users) and all(_local_user(u, ours) for u in users)
        if edu_type == "m.presence":
            push = content.get("push")
            if not isinstance(push, list) or not push:
                return False
            return all(isinstance(p, Mapping) and _local_user(p.get("user_id"), ours) for p in push)
        if edu_type == "m.direct_to_device":
            return _local_user(content.get("sender"), ours)
        if edu_type == "m.device_list_update":
            return _local_user(content.get("user_id"), ours)
        return False

    async def notify_destination_up(self, destination: str) -> None:
        """Called on every authenticated inbound request: retry a backed-off destination now.

        Costs one set look-up for a healthy destination.
        """
        if destination not in self._backoff or self._stopping:
            return
        self._backoff.discard(destination)
        self._dead.discard(destination)
        await self.db.execute(
            "UPDATE outbound_destinations SET next_attempt_ts = 0, dead = 0 WHERE destination = ?",
            destination,
        )
        self._update_gauges()
        log.info("destination is back, retrying now", extra={"destination": destination})
        kick = self._kick.get(destination)
        if kick is not None:
            kick.set()
        self._ensure_worker(destination)

    # ------------------------------------------------------------------ introspection

    def destinations_in_backoff(self) -> set[str]:
        return set(self._backoff)

    async def queue_depth(self, destination: str) -> tuple[int, int]:
        pdus = await self.db.fetchval(
            "SELECT COUNT(*) FROM outbound_pdu_queue WHERE destination = ?", destination
        )
        edus = await self.db.fetchval(
            "SELECT COUNT(*) FROM outbound_edu_queue WHERE destination = ?", destination
        )
        return int(pdus), int(edus)

    async def get_state(self, destination: str) -> DestinationState | None:
        row = await self.db.fetchone(
            f"SELECT {_STATE_COLUMNS} FROM outbound_destinations WHERE destination = ?", destination
        )
        return None if row is None else self._state_from_row(row)

    # ------------------------------------------------------------------ wake-ups

    def _wake_after_commit(
        self, check_sql: str, args: tuple[Any, ...], dests: list[str], pdus: int = 0, edus: int = 0
    ) -> None:
        """Wake the destinations' workers once the enqueuing transaction has committed
        (``check_sql`` finds a row only then)."""
        if self._stopping:
            return
        task = asyncio.create_task(self._wake_when_visible(check_sql, args, dests, pdus, edus))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _wake_when_visible(
        self, check_sql: str, args: tuple[Any, ...], dests: list[str], pdus: int, edus: int
    ) -> None:
        # SQLite: this read waits for the writer's lock, so the first try sees the commit.
        # PostgreSQL: the row appears when the other connection commits; poll briefly.
        deadline = time.monotonic() + COMMIT_WAIT_SECONDS
        delay = 0.001
        while True:
            seen = await self.db.fetchval(check_sql, *args)
            if seen:
                break
            if time.monotonic() > deadline:
                return  # rolled back (or already sent); the sweep covers anything else
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
        for dest in dests:
            p, e = self._depth.get(dest, (0, 0))
            self._depth[dest] = (p + pdus, e + edus)
            self._ensure_worker(dest)
        self._update_gauges()

    def _ensure_worker(self, destination: str) -> None:
        if self._stopping or destination in self._dead:
            return
        wake = self._wake.setdefault(destination, asyncio.Event())
        wake.set()
        if destination not in self._workers:
            task = asyncio.create_task(self._run_destination(destination), name=f"outbound:{destination}")
            self._workers[destination] = task

    async def _sweep(self) -> None:
        # Our events no destination waits for any more (collapsed queues leave some).
        await self.db.execute(
            "DELETE FROM outbound_pdus WHERE NOT EXISTS"
            " (SELECT 1 FROM outbound_pdu_queue q WHERE q.event_id = outbound_pdus.event_id)"
        )
        rows = await self.db.fetchall(
            "SELECT DISTINCT destination FROM outbound_pdu_queue"
            " UNION SELECT DISTINCT destination FROM outbound_edu_queue"
        )
        for (dest,) in rows:
            if dest not in self._workers:
                self._ensure_worker(dest)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.sweep_interval)
            try:
                await self._sweep()
            except Exception:
                log.exception("outbound sweep failed")

    # ------------------------------------------------------------------ the worker

    async def _run_destination(self, dest: str) -> None:
        me = asyncio.current_task()
        wake = self._wake.setdefault(dest, asyncio.Event())
        kick = self._kick.setdefault(dest, asyncio.Event())
        try:
            while not self._stopping:
                state = await self._load_state(dest)
                if state.dead:
                    return
                wait_ms = state.next_attempt_ts - _now_ms()
                if wait_ms > 0:
                    # In backoff: sleep until the retry time, or until it contacts us.
                    kick.clear()
                    try:
                        await asyncio.wait_for(kick.wait(), wait_ms / 1000)
                    except TimeoutError:
                        pass
                    continue
                wake.clear()
                if state.failure_count and not state.catch_up:
                    await self._catch_up_if_needed(state, "threshold")
                    state = await self._load_state(dest)
                batch = await self._next_batch(state)
                if batch is None:
                    if wake.is_set():
                        continue
                    self._depth[dest] = (0, 0)
                    self._update_gauges()
                    return
                await self._send(state, batch)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("outbound worker failed", extra={"destination": dest})
        finally:
            if self._workers.get(dest) is me:
                del self._workers[dest]

    @staticmethod
    def _state_from_row(row: tuple[Any, ...]) -> DestinationState:
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

    async def _load_state(self, dest: str) -> DestinationState:
        row = await self.db.fetchone(
            f"SELECT {_STATE_COLUMNS} FROM outbound_destinations WHERE destination = ?", dest
        )
        if row is None:
            await self.db.execute(
                "INSERT INTO outbound_destinations (destination) VALUES (?) ON CONFLICT (destination) DO NOTHING",
                dest,
            )
            row = await self.db.fetchone(
                f"SELECT {_STATE_COLUMNS} FROM outbound_destinations WHERE destination = ?", dest
            )
            assert row is not None
        return self._state_from_row(row)

    async def _next_batch(self, state: DestinationState) -> Batch | None:
        """The oldest PDUs and EDUs of the queue, or the pending transaction to retry."""
        dest = state.destination
        pending = state.pending_txn_id is not None
        pdu_sql = (
            "SELECT q.queue_id, q.event_id, p.json FROM outbound_pdu_queue q"
            " JOIN outbound_pdus p ON p.event_id = q.event_id WHERE q.destination = ?"
        )
        edu_sql = "SELECT queue_id, edu_type, content FROM outbound_edu_queue WHERE destination = ?"
        pdu_args: list[Any] = [dest]
        edu_args: list[Any] = [dest]
        if pending:
            # Retry exactly what was in flight: same txnId, same content.
            pdu_sql += " AND q.queue_id <= ?"
            pdu_args.append(state.pending_pdu_max or 0)
            edu_sql += " AND queue_id <= ?"
            edu_args.append(state.pending_edu_max or 0)
        pdu_rows = await self.db.fetchall(
            pdu_sql + " ORDER BY q.queue_id LIMIT ?", *pdu_args, self.config.max_pdus_per_transaction
        )
        edu_rows = await self.db.fetchall(
            edu_sql + " ORDER BY queue_id LIMIT ?", *edu_args, self.config.max_edus_per_transaction
        )
        if not pdu_rows and not edu_rows:
            if pending:
                await self._clear_pending(dest)
                return await self._next_batch(await self._load_state(dest))
            return None
        pdus = [(int(qid), str(eid), json.loads(raw)) for qid, eid, raw in pdu_rows]
        edus = [(int(qid), {"edu_type": t, "content": json.loads(raw)}) for qid, t, raw in edu_rows]
        if pending:
            assert state.pending_txn_id is not None
            return Batch(state.pending_txn_id, pdus, edus)
        txn = max(state.last_txn_id + 1, _now_ms())
        await self.db.execute(
            "UPDATE outbound_destinations SET last_txn_id = ?, pending_txn_id = ?, pending_pdu_max = ?,"
            " pending_edu_max = ? WHERE destination = ?",
            txn,
            str(txn),
            pdus[-1][0] if pdus else 0,
            edus[-1][0] if edus else 0,
            dest,
        )
        return Batch(str(txn), pdus, edus)

    async def _clear_pending(self, dest: str) -> None:
        await self.db.execute(
            "UPDATE outbound_destinations SET pending_txn_id = NULL, pending_pdu_max = NULL,"
            " pending_edu_max = NULL WHERE destination = ?",
            dest,
        )

    async def _send(self, state: DestinationState, batch: Batch) -> None:
        dest = state.destination
        body = {
            "origin": self.server_name,
            "origin_server_ts": _now_ms(),
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

    async def _succeeded(self, state: DestinationState, batch: Batch) -> None:
        dest = state.destination
        pdu_ids = [qid for qid, _, _ in batch.pdu_rows]
        event_ids = [eid for _, eid, _ in batch.pdu_rows]
        edu_ids = [qid for qid, _ in batch.edu_rows]
        async with self.db.transaction() as conn:
            if pdu_ids:
                marks = ",".join("?" * len(pdu_ids))
                await conn.execute(
                    f"DELETE FROM outbound_pdu_queue WHERE destination = ? AND queue_id IN ({marks})",
                    dest,
                    *pdu_ids,
                )
            if edu_ids:
                marks = ",".join("?" * len(edu_ids))
                await conn.execute(
                    f"DELETE FROM outbound_edu_queue WHERE destination = ? AND queue_id IN ({marks})",
                    dest,
                    *edu_ids,
                )
            await conn.execute(
                "UPDATE outbound_destinations SET failure_count = 0, first_failure_ts = NULL,"
                " retry_interval_ms = 0, next_attempt_ts = 0, dead = 0, catch_up = 0,"
                " pending_txn_id = NULL, pending_pdu_max = NULL, pending_edu_max = NULL,"
                " last_success_ts = ? WHERE destination = ?",
                _now_ms(),
                dest,
            )
        if event_ids:
            # After the commit: of two destinations finishing the same event at once, the
            # later one sees both queues empty (inside the transaction, neither would).
            marks = ",".join("?" * len(event_ids))
            await self.db.execute(
                f"DELETE FROM outbound_pdus WHERE event_id IN ({marks}) AND NOT EXISTS"
                " (SELECT 1 FROM outbound_pdu_queue q WHERE q.event_id = outbound_pdus.event_id)",
                *event_ids,
            )
        if state.failure_count or state.catch_up:
            log.info("destination recovered", extra={"destination": dest, "failures": state.failure_count})
        self._backoff.discard(dest)
        self._catch_up.discard(dest)
        self._dead.discard(dest)
        p, e = self._depth.get(dest, (0, 0))
        self._depth[dest] = (max(0, p - len(pdu_ids)), max(0, e - len(edu_ids)))
        self._update_gauges()

    def next_interval_ms(self, previous_ms: int) -> int:
        """The next backoff interval (before jitter) after one more failure."""
        cfg = self.config
        if previous_ms <= 0:
            return int(cfg.backoff_initial_seconds * 1000)
        return int(min(previous_ms * cfg.backoff_factor, cfg.backoff_ceiling_seconds * 1000))

    async def _failed(self, state: DestinationState, reason: str) -> None:
        dest = state.destination
        now = _now_ms()
        cfg = self.config
        interval = self.next_interval_ms(state.retry_interval_ms)
        jitter = 1 + random.uniform(-cfg.backoff_jitter, cfg.backoff_jitter)
        next_attempt = now + int(interval * jitter)
        first = state.first_failure_ts if state.first_failure_ts is not None else now
        dead = now - first >= cfg.dead_after_days * 86_400_000
        pdus, edus = await self.queue_depth(dest)
        collapse = dead or pdus > cfg.catch_up_threshold
        if collapse:
            # Before the collapse commits, as in _catch_up_if_needed.
            self._catch_up.add(dest)
        async with self.db.transaction() as conn:
            await conn.execute(
                "UPDATE outbound_destinations SET failure_count = failure_count + 1, first_failure_ts = ?,"
                " retry_interval_ms = ?, next_attempt_ts = ?, dead = ? WHERE destination = ?",
                first,
                interval,
                next_attempt,
                1 if dead else 0,
                dest,
            )
            if collapse:
                await self._collapse(conn, dest)
        if collapse:
            self.metrics.outbound_catch_ups.labels("dead" if dead else "threshold").inc()
            pdus, edus = await self.queue_depth(dest)
        self._depth[dest] = (pdus, edus)
        self._backoff.add(dest)
        if dead:
            self._dead.add(dest)
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
        self._update_gauges()

    async def _catch_up_if_needed(self, state: DestinationState, reason: str) -> None:
        pdus, _ = await self.queue_depth(state.destination)
        if pdus <= self.config.catch_up_threshold:
            return
        # In catch-up before the collapse commits: an event enqueued meanwhile already
        # replaces its room's marker instead of growing the queue.
        self._catch_up.add(state.destination)
        async with self.db.transaction() as conn:
            await self._collapse(conn, state.destination)
        self.metrics.outbound_catch_ups.labels(reason).inc()
        log.info("catching destination up instead of replaying its queue",
                 extra={"destination": state.destination, "queued": pdus})

    async def _collapse(self, conn: Connection, dest: str) -> None:
        """Shrink the queue to the catch-up marker: our newest event of each room; drop EDUs."""
        await conn.execute(
            "DELETE FROM outbound_pdu_queue WHERE destination = ? AND queue_id NOT IN"
            " (SELECT MAX(queue_id) FROM outbound_pdu_queue WHERE destination = ? GROUP BY room_id)",
            dest,
            dest,
        )
        await conn.execute("DELETE FROM outbound_edu_queue WHERE destination = ?", dest)
        await conn.execute(
            "UPDATE outbound_destinations SET catch_up = 1, pending_txn_id = NULL, pending_pdu_max = NULL,"
            " pending_edu_max = NULL WHERE destination = ?",
            dest,
        )

    def _update_gauges(self) -> None:
        self.metrics.outbound_destinations_backoff.set(len(self._backoff - self._dead))
        self.metrics.outbound_destinations_dead.set(len(self._dead))
        self.metrics.outbound_queue_depth.labels("pdu").set(sum(p for p, _ in self._depth.values()))
        self.metrics.outbound_queue_depth.labels("edu").set(sum(e for _, e in self._depth.values()))
