"""Delivering notifications to push gateways (push gateway API, ``POST
/_matrix/push/v1/notify``).

Each pusher's queue is durable and needs no table of its own: it is its user's
notification rows (storage/push.py) above the pusher's ``last_stream_ordering``, which
moves forward only after the gateway accepted a notification. One task per pusher sends
them in order; the notification pass (push/notify.py) only wakes it, so event processing
never waits on a gateway. A failure (transport, timeout, 5xx, 429) is retried with
exponential backoff (``BACKOFF_BASE`` doubling up to ``BACKOFF_MAX``), stored with the
pusher so a restart keeps it; a notification older than ``MAX_AGE_MS`` is dropped instead
of retried, as is one the gateway refuses with another 4xx. Notifications read before they
were sent are skipped. A pusher whose pushkey a reply lists in ``rejected`` is removed
(other pushkeys listed there are ignored). Requests go
through the one outbound client (net/client.py ``post_url_json``): its pool, timeout, byte
bound and IP-range policy (a gateway URL is a client's choice).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from homeserver.errors import FederationRequestError
from homeserver.events.event import Event
from homeserver.push.evaluate import Decision
from homeserver.storage.events import EventStore
from homeserver.storage.push import Notification, Pusher, PushStore
from homeserver.util.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)

Post = Callable[..., Awaitable[tuple[int, Any]]]  # post_url_json(url, body, timeout=...)

BACKOFF_BASE = 1.0
BACKOFF_MAX = 600.0
MAX_AGE_MS = 24 * 3600 * 1000
REQUEST_TIMEOUT = 10.0
BATCH = 20
STOP_SECONDS = 5.0  # how long stop() waits for the workers (never forever)


def notify_body(pusher: Pusher, n: Notification, event: Event | None, unread: int) -> dict[str, Any]:
    """The push gateway API's ``notification`` for one notification to one pusher."""
    tweaks = {a["set_tweak"]: a.get("value", True) if a["set_tweak"] == "highlight" else a.get("value")
              for a in n.actions if isinstance(a, dict) and isinstance(a.get("set_tweak"), str)}
    high = n.highlight or "sound" in tweaks or (event is not None and event.type == "m.room.encrypted")
    device = {
        "app_id": pusher.app_id, "pushkey": pusher.pushkey, "pushkey_ts": pusher.created_ts // 1000,
        "data": {k: v for k, v in pusher.data.items() if k != "url"}, "tweaks": tweaks,
    }
    out: dict[str, Any] = {
        "event_id": n.event_id, "room_id": n.room_id, "prio": "high" if high else "low",
        "counts": {"unread": unread}, "devices": [device],
    }
    if pusher.data.get("format") != "event_id_only" and event is not None:
        out.update({"type": event.type, "sender": event.sender, "content": dict(event.content)})
        if event.state_key is not None:
            out["user_is_target"] = event.state_key == pusher.user_id
    return {"notification": out}


class _Worker:
    def __init__(self, sender: PushSender, pusher: Pusher) -> None:
        self.sender = sender
        self.pusher = pusher
        self.wake = asyncio.Event()
        self.wake.set()
        self.stopped = False
        self.task = asyncio.get_running_loop().create_task(self.run(), name=f"pusher-{pusher.app_id}")

    def stop(self) -> None:
        """Cancel the worker; should the cancellation be swallowed inside a call, the loop
        still ends at its next turn (the flag), so no shutdown waits on it forever."""
        self.stopped = True
        self.wake.set()
        self.task.cancel()

    async def run(self) -> None:
        s = self.sender
        p = self.pusher
        last, failures, retry_at = p.last_stream_ordering, p.failures, p.retry_at
        while not self.stopped:
            delay = (retry_at - s.clock.time_ms()) / 1000
            if delay > 0:
                await s.clock.sleep(delay)
            else:
                await self.wake.wait()
            self.wake.clear()
            while not self.stopped:
                rows = await s.store.notifications_after(p.user_id, last, BATCH)
                if not rows:
                    break
                failed = False
                for n in rows:
                    outcome = await self._send(n)
                    if outcome == "retry":
                        failures += 1
                        retry_at = s.clock.time_ms() + int(min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (failures - 1)) * 1000)
                        await s.store.pusher_progress(p, last, failures, retry_at)
                        failed = True
                        break
                    if outcome == "gone":
                        return
                    last, failures, retry_at = n.stream_ordering, 0, 0
                    await s.store.pusher_progress(p, last, 0, 0)
                if failed:
                    break

    async def _send(self, n: Notification) -> str:
        """``sent`` (or skipped), ``retry`` or ``gone`` (the gateway rejected this pushkey)."""
        s, p = self.sender, self.pusher
        if not n.unread or s.clock.time_ms() - n.ts > MAX_AGE_MS:
            return "sent"
        stored = await s.events.get_event(n.event_id)
        event = stored.event if stored is not None else None
        body = notify_body(p, n, event, await s.store.unread_total(p.user_id))
        if event is not None and p.data.get("format") != "event_id_only":
            body["notification"].update(await self._names(event))
        try:
            status, reply = await s.post(p.data["url"], body, timeout=REQUEST_TIMEOUT)
        except FederationRequestError as e:
            log.info("push gateway unreachable", extra={"app_id": p.app_id, "error": str(e)})
            return "retry"
        if status == 429 or status >= 500:
            return "retry"
        if status >= 300:
            log.info("push gateway refused a notification", extra={"app_id": p.app_id, "status": status})
            return "sent"
        rejected = reply.get("rejected") if isinstance(reply, dict) else None
        # Only the pushkey we sent, and only this user's pusher: the gateway is a URL any user
        # chose, and must not remove other users' pushers by naming their pushkeys.
        if isinstance(rejected, list) and p.pushkey in rejected:
            await s.store.delete_pusher(p.user_id, p.app_id, p.pushkey)
            await s.reload_all()
            return "gone"
        s.sent += 1
        return "sent"


    async def _names(self, event: Event) -> dict[str, str]:
        """The room's name and alias and the sender's display name, where set."""
        events = self.sender.events
        out: dict[str, str] = {}
        for key, field, name in ((("m.room.name", ""), "room_name", "name"),
                                 (("m.room.canonical_alias", ""), "room_alias", "alias"),
                                 (("m.room.member", event.sender), "sender_display_name", "displayname")):
            eid = await events.current_state_id(event.room_id, key)
            stored = await events.get_event(eid) if eid is not None else None
            value = stored.event.content.get(name) if stored is not None else None
            if isinstance(value, str) and value:
                out[field] = value
        return out


class PushSender:
    def __init__(self, store: PushStore, events: EventStore, post: Post, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.store = store
        self.events = events
        self.post = post
        self.clock = clock
        self._workers: dict[tuple[str, str, str], _Worker] = {}
        self._by_user: dict[str, list[tuple[str, str, str]]] = {}
        self.sent = 0

    async def start(self) -> None:
        await self.reload_all()

    async def stop(self) -> None:
        workers, self._workers = list(self._workers.values()), {}
        self._by_user = {}
        for w in workers:
            w.stop()
        if workers:
            await asyncio.wait({w.task for w in workers}, timeout=STOP_SECONDS)
        for w in workers:
            if w.task.done() and not w.task.cancelled():
                w.task.exception()  # retrieved (a worker logs its own failures)

    async def reload_all(self) -> None:
        """Match the workers to the stored pushers (after a change or a rejection)."""
        pushers = {(p.user_id, p.app_id, p.pushkey): p for p in await self.store.pushers()}
        for key in list(self._workers):
            if key not in pushers or pushers[key].data != self._workers[key].pusher.data:
                self._workers.pop(key).stop()
        for key, p in pushers.items():
            if key not in self._workers:
                self._workers[key] = _Worker(self, p)
        self._by_user = {}
        for key in self._workers:
            self._by_user.setdefault(key[0], []).append(key)

    def on_notified(self, event: Event, ordering: int, decisions: Mapping[str, Decision]) -> None:
        """The notification pass's listener: wake the pushers of the users notified."""
        for user in decisions:
            for key in self._by_user.get(user, ()):
                self._workers[key].wake.set()
