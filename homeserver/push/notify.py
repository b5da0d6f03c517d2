"""The notification pass: every event persisted into a room (created here or received over
federation) is evaluated against the push rules of each local member it may notify, and a
notification row is recorded for each one it does (storage/push.py), which /sync's
``unread_notifications``, ``GET /notifications`` and the pushers (push/sender.py) read.

Durable: the pass evaluates accepted events in stream order and records, in the same
transaction as each batch's notification rows, the stream ordering it has reached (the
``push_pass`` cursor). The persister tells the notifier of each event after its commit;
``on_event`` here only queues it (the pass runs in its own task, so neither the inbound
worker nor a client's send waits for it). On start-up, and whenever the bounded queue
(``MAX_QUEUED_EVENTS``) overflowed or a batch failed, the pass reads the events committed
after its cursor from the database instead, ``BATCH`` at a time (a long backlog never
takes more memory than a batch), until it has caught up. An event evaluated twice (say, a
queued event also read back) adds nothing: a notification is recorded once per (user, event). A notification made while
catching up carries the time its event was received: the push sender does not push one
older than its ``MAX_AGE_MS`` (24 hours, as Synapse gives up on a notification), though it
is counted.

Who is evaluated: the room's joined local members but the sender (and a local user an
invite is for). The room's state comes from the persister's cache (current state after the
event); member display names and the power levels are read once per member event ID and
kept (bounded). An event already redacted is not evaluated, and a redaction that applies
removes its target's notifications (the spec: redacted events do not count). Receipts mark
notifications read (``on_receipt``): an unthreaded receipt all of the room's up to its
event, a threaded one those of its thread; a local user's own event marks theirs read up
to it, and so does leaving the room. Read notifications are deleted after 30 days, unread
ones after 90 (checked hourly).
"""
from __future__ import annotations

import asyncio
import logging
import os
from collections import OrderedDict, deque
from collections.abc import Mapping
from typing import Any, Protocol

from homeserver.events.event import Event, StateKey
from homeserver.push.evaluate import DEFAULT_RULES, Decision, EventContext, Member
from homeserver.push.rulebook import RuleBook
from homeserver.rooms.redactions import applied_redactions
from homeserver.storage.events import EventStore, Outcome
from homeserver.storage.push import Notification, PushStore
from homeserver.util.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)

MAX_QUEUED_EVENTS = 20_000
BATCH = 100  # events evaluated per write of notification rows
PRUNE_EVERY_MS = 3600 * 1000
KEEP_READ_MS = 30 * 24 * 3600 * 1000
KEEP_UNREAD_MS = 90 * 24 * 3600 * 1000
MEMBER_CACHE_SIZE = 100_000
SETTLE_SECONDS = 0.5
RETRY_SECONDS = 1.0  # after a failed batch
# How long stop() waits for the pass to end: a cancellation swallowed by a call inside the
# pass (seen once, in a CI run: shutdown waited forever) must not hang the server's shutdown.
STOP_SECONDS = 5.0
# Tests only (tests/integration/test_push_crash.py): seconds the pass waits before each
# round, so that a test can kill the server between an event's commit and its pass. An
# environment variable of the server's process: no client can reach it.
DELAY_ENV = "HOMESERVER_TEST_PUSH_PASS_DELAY"


class StateSource(Protocol):
    async def current_state(self, room_id: str) -> Mapping[StateKey, str]: ...


class Wakes(Protocol):
    def wake_user(self, user_id: str) -> None: ...


def thread_of(content: Mapping[str, Any]) -> str:
    """The thread an event belongs to: its root's ID, or ``main``."""
    relates = content.get("m.relates_to")
    if isinstance(relates, dict) and relates.get("rel_type") == "m.thread" and isinstance(relates.get("event_id"), str):
        return str(relates["event_id"])
    return "main"


def sender_power(power_levels: Mapping[str, Any] | None, sender: str) -> tuple[int, Mapping[str, Any]]:
    """The sender's power level and the ``notifications`` levels of a power levels content."""
    if power_levels is None:
        return 0, {}
    users = power_levels.get("users")
    level = users.get(sender) if isinstance(users, dict) and sender in users else power_levels.get("users_default", 0)
    notifications = power_levels.get("notifications")
    return (level if isinstance(level, int) and not isinstance(level, bool) else 0,
            notifications if isinstance(notifications, dict) else {})


class NotificationPass:
    def __init__(
        self, server_name: str, events: EventStore, state: StateSource, store: PushStore, rulebook: RuleBook,
        wakes: Wakes, *, clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.suffix = ":" + server_name
        self.events = events
        self.state = state
        self.store = store
        self.rulebook = rulebook
        self.wakes = wakes
        self.clock = clock
        self._queue: deque[tuple[Event, int]] = deque()
        self._cursor = 0  # every accepted event up to this stream ordering has been evaluated
        # Events above the cursor may be committed but not queued (start-up, an overflow,
        # a failed batch): read them from the database before the queue.
        self._backlog = True
        self._ready = asyncio.Event()
        self._ready.set()
        self._idle = asyncio.Event()
        self._delay = float(os.environ.get(DELAY_ENV) or 0)
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        # member or power levels event ID -> its content (bounded, the oldest entries out)
        self._contents: OrderedDict[str, Mapping[str, Any]] = OrderedDict()
        self._members: dict[str, Member] = {}  # member event ID -> Member (cleared when full)
        self.dropped = 0
        self._pruned_at = 0
        # Told the users notified by each event (the push sender).
        self.listeners: list[Any] = []

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._idle.clear()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="push-notification-pass")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True  # a loop whose cancellation was swallowed ends at its next turn
        self._ready.set()
        task.cancel()
        await asyncio.wait({task}, timeout=STOP_SECONDS)
        if not task.done():
            log.warning("push notification pass did not stop within %s s", STOP_SECONDS)
        elif not task.cancelled():
            task.exception()  # retrieved (the pass logs its own errors)

    async def flush(self) -> None:
        """Wait until every queued event has been through the pass (tests, benchmarks)."""
        while self._task is not None and (self._queue or not self._idle.is_set()):
            await self._idle.wait()
            await asyncio.sleep(0)

    async def unread_counts(
        self, user_id: str, settle: float = SETTLE_SECONDS
    ) -> dict[str, dict[str, tuple[int, int]]]:
        """The user's unread (notification, highlight) counts per room and thread, once the
        events queued so far have been through the pass (waiting at most ``settle`` seconds):
        a /sync woken by an event then sees the counts it brought."""
        if self._task is not None and not self._idle.is_set():
            try:
                await asyncio.wait_for(self._idle.wait(), settle)
            except TimeoutError:
                pass
        return await self.store.unread_counts(user_id)

    # ------------------------------------------------------------------ intake

    def on_event(self, event: Event, outcome: Outcome, stream_ordering: int) -> None:
        """The notifier's listener: queue an accepted event (quick, never raises)."""
        if outcome is not Outcome.ACCEPTED or stream_ordering <= 0:
            return
        if len(self._queue) >= MAX_QUEUED_EVENTS:
            # Not lost: the pass reads the events it was not given from the database.
            self.dropped += 1
            self._backlog = True
        else:
            self._queue.append((event, stream_ordering))
        self._idle.clear()
        self._ready.set()

    async def _run(self) -> None:
        while not self._stopping:
            await self._ready.wait()
            if self._stopping:
                return
            self._ready.clear()
            if self._delay:
                await asyncio.sleep(self._delay)
            try:
                await self._drain()
            except Exception:
                log.exception("push notification pass failed; retrying")
                self._backlog = True
                self._ready.set()
                await asyncio.sleep(RETRY_SECONDS)
                continue
            now = self.clock.time_ms()
            if now - self._pruned_at >= PRUNE_EVERY_MS:
                self._pruned_at = now
                try:
                    await self.store.prune(now - KEEP_READ_MS, now - KEEP_UNREAD_MS)
                except Exception:
                    log.exception("pruning notifications failed")
            if not self._queue and not self._backlog:
                self._idle.set()

    async def _drain(self) -> None:
        """Evaluate every event above the cursor: those committed but not queued first (read
        from the database, a batch at a time), then the queued ones."""
        if self._backlog and self._cursor == 0:
            self._cursor = await self.store.pass_cursor()
        while self._backlog or self._queue:
            if self._backlog:
                self._queue.clear()  # the database has them (all committed before being queued)
                read = await self.events.accepted_after(self._cursor, BATCH)
                if not read:
                    self._backlog = False
                    continue
                await self.process([(stored.event, stored.stream_ordering, received) for stored, received in read])
            else:
                now = self.clock.time_ms()
                batch = [(event, ordering, now) for event, ordering in
                         (self._queue.popleft() for _ in range(min(BATCH, len(self._queue))))
                         if ordering > self._cursor]
                if batch:
                    await self.process(batch)

    # ------------------------------------------------------------------ the pass

    async def _contents_of(self, event_ids: list[str]) -> dict[str, Mapping[str, Any]]:
        out: dict[str, Mapping[str, Any]] = {}
        missing = []
        for eid in event_ids:
            found = self._contents.get(eid)
            if found is None:
                missing.append(eid)
            else:
                out[eid] = found
        if missing:
            for eid, stored in (await self.events.get_events(missing)).items():
                full = stored.event.content
                # Of a member event only what the pass reads is kept (memory per cached member).
                content = ({k: full[k] for k in ("membership", "displayname") if k in full}
                           if stored.event.type == "m.room.member" else dict(full))
                out[eid] = self._contents[eid] = content
            while len(self._contents) > MEMBER_CACHE_SIZE:
                self._contents.popitem(last=False)
        return out

    async def evaluate(self, event: Event) -> dict[str, Decision]:
        """Which local users ``event`` notifies, and how."""
        state = await self.state.current_state(event.room_id)
        member_ids: dict[str, str] = {}
        for (etype, key), eid in state.items():
            if etype == "m.room.member":
                member_ids[key] = eid
        pl_id = state.get(("m.room.power_levels", ""))
        contents = await self._contents_of([*member_ids.values(), *([pl_id] if pl_id else [])])
        joined = 0
        candidates: list[Member] = []
        for user, eid in member_ids.items():
            content = contents.get(eid, {})
            if content.get("membership") != "join":
                continue
            joined += 1
            if user.endswith(self.suffix) and user != event.sender:
                member = self._members.get(eid)
                if member is None:
                    if len(self._members) >= MEMBER_CACHE_SIZE:
                        self._members.clear()
                    name = content.get("displayname")
                    member = self._members[eid] = Member(user, name if isinstance(name, str) else None)
                candidates.append(member)
        if (event.type == "m.room.member" and event.state_key and event.state_key.endswith(self.suffix)
                and event.content.get("membership") == "invite" and event.state_key != event.sender):
            candidates.append(Member(event.state_key))
        if not candidates:
            return {}
        power, levels = sender_power(contents.get(pl_id) if pl_id else None, event.sender)
        ctx = EventContext(event.pdu, joined, power, levels)
        compiled = await self.rulebook.compiled([m.user_id for m in candidates])
        shared = [m for m in candidates if compiled.get(m.user_id) is None]
        out = DEFAULT_RULES.evaluate(ctx, shared) if shared else {}
        for m in candidates:
            own = compiled.get(m.user_id)
            if own is not None:
                try:
                    out.update(own.evaluate(ctx, [m]))
                except Exception:  # one user's rules failing never costs the others theirs
                    log.exception("push evaluation failed for a user", extra={"user_id": m.user_id})
        return out

    async def process(self, batch: list[tuple[Event, int, int]]) -> None:
        """Evaluate a batch of (event, stream ordering, time received), in stream order, and
        record their notifications and the cursor in one transaction; an event whose
        evaluation fails is logged and skipped."""
        rows: list[Notification] = []
        read: dict[tuple[str, str], int] = {}
        done: list[tuple[Event, int, dict[str, Decision]]] = []
        # Redacted already (its redaction came first): not evaluated. A redaction that
        # applies: its target's notifications go.
        targets = {e.redacts: e for e, _, _ in batch if e.type == "m.room.redaction" and e.redacts}
        held = await self.events.get_events(targets) if targets else {}
        applied = await applied_redactions(self.events, [
            *(e for e, _, _ in batch), *(s.event for s in held.values())])
        redacted = [t for t, r in applied.items() if t in targets and r.event_id == targets[t].event_id]
        for event, ordering, ts in batch:
            try:
                decisions = {} if event.event_id in applied else await self.evaluate(event)
            except Exception:
                log.exception("push evaluation failed", extra={"event_id": event.event_id})
                continue
            if event.sender.endswith(self.suffix):
                # Sending is reading: the sender has seen the room up to their own event.
                read[(event.sender, event.room_id)] = ordering
            if (event.type == "m.room.member" and event.state_key and event.state_key.endswith(self.suffix)
                    and event.content.get("membership") in ("leave", "ban")):
                # Leaving: what the room notified is no longer unread (pushes' counts).
                read[(event.state_key, event.room_id)] = ordering
            if decisions:
                thread = thread_of(event.content)
                rows.extend(Notification(user, event.event_id, event.room_id, ordering, thread, d.highlight,
                                         list(d.actions), ts) for user, d in decisions.items())
                done.append((event, ordering, decisions))
        cursor = batch[-1][1]
        await self.store.record_pass(rows, read, redacted, cursor)
        self._cursor = max(self._cursor, cursor)
        for event, ordering, decisions in done:
            for user in decisions:
                self.wakes.wake_user(user)
            for listener in self.listeners:
                listener(event, ordering, decisions)

    async def on_receipt(self, user_id: str, room_id: str, receipt_type: str, event_id: str, thread_id: str) -> None:
        """A local user's ``m.read`` / ``m.read.private`` receipt: their notifications it covers are read."""
        if receipt_type not in ("m.read", "m.read.private"):
            return
        stored = await self.events.get_event(event_id)
        if stored is None or stored.event.room_id != room_id:
            return
        await self.store.mark_read(user_id, room_id, thread_id or None, stored.stream_ordering)


def unread_sections(counts: Mapping[str, tuple[int, int]], by_thread: bool) -> dict[str, Any]:
    """/sync's ``unread_notifications`` (and, ``by_thread``, ``unread_thread_notifications``)
    from a room's unread (notification, highlight) counts per thread."""
    if not by_thread:
        return {"unread_notifications": {
            "notification_count": sum(n for n, _ in counts.values()),
            "highlight_count": sum(h for _, h in counts.values()),
        }}
    main = counts.get("main", (0, 0))
    out: dict[str, Any] = {"unread_notifications": {"notification_count": main[0], "highlight_count": main[1]}}
    threads = {t: {"notification_count": n, "highlight_count": h} for t, (n, h) in counts.items() if t != "main"}
    if threads:
        out["unread_thread_notifications"] = threads
    return out
