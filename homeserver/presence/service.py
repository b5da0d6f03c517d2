"""Presence: one ``PresenceService`` per server (made by ``Services``, app.py), shared by
the client API (``api.py``: PUT/GET /status; /sync's ``set_presence`` and presence
section) and the inbound worker (``m.presence`` EDUs).

* States live in memory (``state.PresenceTracker``): local users' as set and timed out
  here, remote users' as their servers said, at most ``presence.max_remote_users``.
* A visible change wakes the /sync long-polls of the rooms the user is joined to (and
  the user's own); /sync shows the changes since its token's presence position, for the
  users who share a room with the syncing user and for themself.
* A change of one of our users goes out as an ``m.presence`` EDU through the one sender,
  only to the servers that share a room with them, at most once per user per destination
  per ``presence.federation_interval_seconds`` (``coalesce.Coalescer``: later changes are
  coalesced and the latest state sent when due).
* A received update (the door kept only the origin's own users, ``edus.presence_edu``) is
  kept only when the user shares a room with one of ours; it is never sent on.
* ``presence.enabled: false``: nothing is kept, shown or sent; received updates are dropped.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import Counter, Gauge

from homeserver.config import PresenceConfig
from homeserver.events.event import Event
from homeserver.events.identifiers import server_name_of
from homeserver.metrics import Metrics, PeerLabelled
from homeserver.notifier import Notifier
from homeserver.presence.coalesce import Coalescer
from homeserver.presence.edus import presence_edu
from homeserver.presence.state import FEDERATION_PING_MS, PresenceTracker, UserPresence
from homeserver.rooms.outbox import Outbox
from homeserver.storage.presence import PresenceStore
from homeserver.util.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)

# Seconds between two runs of the timeouts and of the due coalesced updates.
TICK_SECONDS = 1.0
# Users one outbound m.presence EDU names at most.
MAX_PUSH_PER_EDU = 100
# Joins waiting for the next tick (their servers are sent our users' presence); past this
# the oldest are dropped.
MAX_PENDING_JOINS = 10_000


class PresenceMetrics:
    def __init__(self, metrics: Metrics) -> None:
        r = metrics.registry
        self.received = PeerLabelled(Counter(
            "hs_presence_received_updates", "Presence updates received and kept, per origin", ["origin"],
            registry=r), metrics.peers, admits=True)
        self.dropped = PeerLabelled(Counter(
            "hs_presence_dropped_updates", "Received presence updates dropped, per origin and reason",
            ["origin", "reason"], registry=r), metrics.peers, admits=True)
        self.sent = Counter("hs_presence_sent_updates", "Presence updates queued for other servers (per user and"
                            " destination)", registry=r)
        self.coalesced_dropped = Counter("hs_presence_pending_dropped", "Outbound presence updates dropped: too"
                                         " many held back by the rate limit", registry=r)
        self.remote_users = Gauge("hs_presence_remote_users", "Remote users whose presence is kept", registry=r)
        self.evicted = Counter("hs_presence_remote_evicted", "Remote users' presence forgotten (over the cap)",
                               registry=r)


_METRICS: weakref.WeakKeyDictionary[Metrics, PresenceMetrics] = weakref.WeakKeyDictionary()


def presence_metrics(metrics: Metrics) -> PresenceMetrics:
    """The presence metrics of a registry, made once."""
    found = _METRICS.get(metrics)
    if found is None:
        found = _METRICS[metrics] = PresenceMetrics(metrics)
    return found


class PresenceService:
    def __init__(
        self, server_name: str, config: PresenceConfig, store: PresenceStore, sender: Outbox,
        notifier: Notifier, metrics: Metrics, clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.server_name = server_name
        self.config = config
        self.store = store
        self.sender = sender
        self.notifier = notifier
        self.metrics = presence_metrics(metrics)
        self.clock = clock
        self.tracker = PresenceTracker(
            idle_ms=int(config.idle_timeout_seconds * 1000), offline_ms=int(config.offline_timeout_seconds * 1000),
            max_remote=config.max_remote_users,
        )
        self.coalescer = Coalescer(config.federation_interval_seconds, max_pending=config.max_pending_updates)
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._evicted = 0
        self._coalesced_dropped = 0
        self._pushed: dict[str, float] = {}  # our user -> when their presence last went out (monotonic)
        self._joins: deque[tuple[str, str]] = deque(maxlen=MAX_PENDING_JOINS)  # (room, user) joined
        self._active: list[UserPresence] = []  # changes by events sent, for the next tick
        if self.enabled:
            notifier.accepted_listeners.append(self._on_event)

    @property
    def enabled(self) -> bool:
        return self.config.enabled

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self.enabled and self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name="presence")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            self._stopping = True  # a loop whose cancellation was swallowed ends at its next tick
            task.cancel()
            await asyncio.wait({task}, timeout=5.0)  # never hangs the server's shutdown
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: an error here was logged by the loop already

    async def _run(self) -> None:
        while not self._stopping:
            await self.clock.sleep(TICK_SECONDS)
            if self._stopping:
                return
            try:
                await self.tick()
            except Exception:
                log.exception("presence tick failed")

    async def tick(self) -> None:
        """The timeouts, then the coalesced updates now due."""
        changed, self._active = self._active, []
        changed += self.tracker.tick(self.clock.time_ms(), self.notifier.is_waiting)
        await self._changed(changed)
        self._count_evictions()
        # Our users not offline are re-sent now and then: other servers time them out.
        mono = self.clock.monotonic()
        pings = [p for p in self.tracker.local.values()
                 if p.presence != "offline" and mono - self._pushed.get(p.user_id, mono) >= FEDERATION_PING_MS / 1000]
        if pings:
            await self._changed(pings, wake=False)
        await self._joined()
        due = self.coalescer.due(self.clock.monotonic())
        if due:
            await self._send(due)

    def _on_event(self, event: Event) -> None:
        """An accepted event (the notifier, after commit): an event sent by our user is
        activity; a join is noted. Both are dealt with on the next tick."""
        if event.type == "m.room.member" and event.membership == "join" and event.state_key:
            self._joins.append((event.room_id, event.state_key))
        self.user_active(event.sender)

    def user_active(self, user_id: str) -> None:
        """Our user did something (sent an event, a receipt, a typing notice): activity,
        dealt with on the next tick."""
        if self.enabled and user_id in self.tracker.local and len(self._active) < MAX_PENDING_JOINS:
            changed = self.tracker.activity(user_id, self.clock.time_ms())
            if changed is not None:
                self._active.append(changed)

    async def _joined(self) -> None:
        """Servers new to a room with our users get their presence: a remote user who
        joined gets our members' (not offline); our user who joined, the room's servers get
        theirs. Through the same rate limit as every update."""
        by_dest: dict[str, list[str]] = {}
        mono = self.clock.monotonic()
        while self._joins:
            room_id, user_id = self._joins.popleft()
            if user_id in self.tracker.local or server_name_of(user_id) == self.server_name:
                state = self.tracker.local.get(user_id)
                if state is None or state.presence == "offline":
                    continue
                servers = {server_name_of(u) for u in await self.store.room_members(room_id)}
                servers.discard(self.server_name)
                pairs = [(user_id, dest) for dest in sorted(servers)]
            else:
                dest = server_name_of(user_id)
                pairs = [(u, dest) for u in await self.store.room_members(room_id)
                         if (s := self.tracker.local.get(u)) is not None and s.presence != "offline"]
            for local_user, dest in pairs:
                for due in self.coalescer.offer(local_user, [dest], mono):
                    by_dest.setdefault(due, []).append(local_user)
        if by_dest:
            await self._send(by_dest)

    # ------------------------------------------------------------------ local users

    async def set_status(self, user_id: str, presence: str, status_msg: str | None) -> None:
        """PUT /presence/{userId}/status (checked by api.py)."""
        if not self.enabled:
            return
        now = self.clock.time_ms()
        changed = self.tracker.set_local(user_id, presence, now, status_msg=status_msg, active=presence == "online")
        await self._changed([changed] if changed is not None else [])

    async def on_sync(self, user_id: str, set_presence: str) -> None:
        """A /sync started with ``set_presence`` (online, unavailable or offline)."""
        if not self.enabled:
            return
        changed = self.tracker.sync(user_id, set_presence, self.clock.time_ms())
        await self._changed([changed] if changed is not None else [])

    def status(self, user_id: str) -> dict[str, Any]:
        """GET /presence/{userId}/status's body (offline when nothing is known)."""
        found = self.tracker.get(user_id) if self.enabled else None
        return (found or UserPresence(user_id)).content(self.clock.time_ms())

    async def may_see(self, viewer: str, user_id: str) -> bool:
        return viewer == user_id or await self.store.share_a_room(viewer, user_id)

    # ------------------------------------------------------------------ /sync

    def position(self) -> int:
        return self.tracker.position

    async def sync_events(self, user_id: str, since: int | None) -> tuple[list[dict[str, Any]], int]:
        """The m.presence events for /sync: users sharing a room with ``user_id`` (and
        themself) whose presence changed after ``since`` (all known, when None), oldest
        change first; and the position to hand out. The caller applies the filter."""
        position = self.tracker.position
        if not self.enabled:
            return [], position
        if since is None:
            candidates = [p for p in (self.tracker.get(u) for u in await self._visible_to(user_id)) if p is not None]
        else:
            candidates = list(self.tracker.changed_since(since))
            if not candidates:
                return [], position
            if any(c.user_id != user_id for c in candidates):
                visible = await self._visible_to(user_id)
                candidates = [c for c in candidates if c.user_id in visible]
            else:
                candidates = [c for c in candidates if c.user_id == user_id]
        now = self.clock.time_ms()
        events = [{"type": "m.presence", "sender": p.user_id, "content": p.content(now)}
                  for p in sorted(candidates, key=lambda p: p.position)]
        return events, position

    async def _visible_to(self, user_id: str) -> set[str]:
        visible = await self.store.users_sharing_a_room(user_id)
        visible.add(user_id)
        return visible

    # ------------------------------------------------------------------ federation

    async def on_edu(self, origin: str, content: Mapping[str, Any]) -> None:
        """An inbound m.presence EDU (from the worker; the door kept the origin's users)."""
        if not self.enabled:
            self.metrics.dropped.labels(origin, "disabled").inc()
            return
        kept = presence_edu(origin, content).content  # checked again: cheap, and the inbox is durable
        if kept is None:
            return
        now = self.clock.time_ms()
        changed: list[UserPresence] = []
        if origin == self.server_name:
            return  # never about our own users
        # The last entry per user counts; who shares a room is one look-up for the whole EDU.
        latest = {e["user_id"]: e for e in kept["push"] if e["user_id"] not in self.tracker.local}
        shared = await self.store.sharing_with_server(list(latest), self.server_name)
        for user_id, entry in latest.items():
            if user_id not in shared:
                self.metrics.dropped.labels(origin, "not_shared").inc()
                continue
            self.metrics.received.labels(origin).inc()
            result = self.tracker.set_remote(
                user_id, entry["presence"], now, status_msg=entry.get("status_msg"),
                last_active_ago=entry.get("last_active_ago"), currently_active=entry["currently_active"],
            )
            if result is not None:
                changed.append(result)
        self._count_evictions()
        await self._changed(changed)  # remote users: woken here, never sent on

    def _count_evictions(self) -> None:
        if self.tracker.evicted != self._evicted:
            self.metrics.evicted.inc(self.tracker.evicted - self._evicted)
            self._evicted = self.tracker.evicted
        self.metrics.remote_users.set(len(self.tracker.remote))

    async def _changed(self, changed: Iterable[UserPresence], *, wake: bool = True) -> None:
        """Wake the long-polls that would show the changes; federate our users' changes."""
        by_dest: dict[str, list[str]] = {}
        mono = self.clock.monotonic()
        for presence in changed:
            if wake:
                for room_id in await self.store.joined_rooms(presence.user_id):
                    self.notifier.wake_room(room_id)
                self.notifier.wake_user(presence.user_id)
            if presence.user_id not in self.tracker.local:
                continue  # never relayed
            self._pushed[presence.user_id] = mono
            servers = await self.store.servers_sharing_a_room(presence.user_id)
            servers.discard(self.server_name)
            for dest in self.coalescer.offer(presence.user_id, sorted(servers), mono):
                by_dest.setdefault(dest, []).append(presence.user_id)
        if self.coalescer.dropped != self._coalesced_dropped:
            self.metrics.coalesced_dropped.inc(self.coalescer.dropped - self._coalesced_dropped)
            self._coalesced_dropped = self.coalescer.dropped
        if by_dest:
            await self._send(by_dest)

    async def _send(self, by_dest: Mapping[str, list[str]]) -> None:
        """One EDU per distinct set of users (of at most MAX_PUSH_PER_EDU), for every
        destination due that set, with each user's latest state."""
        now = self.clock.time_ms()
        groups: dict[tuple[str, ...], list[str]] = {}
        for dest, users in by_dest.items():
            groups.setdefault(tuple(sorted(set(users))), []).append(dest)
        for group, dests in groups.items():
            push = []
            for user_id in group:
                state = self.tracker.local.get(user_id)
                if state is not None:
                    push.append({"user_id": user_id, **state.content(now)})
            for i in range(0, len(push), MAX_PUSH_PER_EDU):
                chunk = push[i:i + MAX_PUSH_PER_EDU]
                if await self.sender.enqueue_edu("m.presence", {"push": chunk}, dests):
                    self.metrics.sent.inc(len(chunk) * len(dests))

