"""The pure parts of the notification pass and the push sender: threads, the sender's
power, /sync's count sections, and the push gateway request body."""

from __future__ import annotations

import asyncio

from homeserver.events.event import Event
from homeserver.events.versions import ROOM_V10
from homeserver.push.notify import sender_power, thread_of, unread_sections
from homeserver.push.sender import notify_body
from homeserver.storage.push import Notification, Pusher


def test_thread_of() -> None:
    assert thread_of({"m.relates_to": {"rel_type": "m.thread", "event_id": "$root"}}) == "$root"
    assert thread_of({"m.relates_to": {"rel_type": "m.replace", "event_id": "$x"}}) == "main"
    assert thread_of({"m.relates_to": "junk"}) == "main"
    assert thread_of({}) == "main"


def test_sender_power() -> None:
    assert sender_power(None, "@a:x") == (0, {})
    pl = {"users": {"@a:x": 100}, "users_default": 5, "notifications": {"room": 20}}
    assert sender_power(pl, "@a:x") == (100, {"room": 20})
    assert sender_power(pl, "@b:x") == (5, {"room": 20})
    assert sender_power({"users_default": True}, "@b:x") == (0, {})


def test_unread_sections() -> None:
    counts = {"main": (3, 1), "$t": (2, 0)}
    assert unread_sections(counts, False) == {"unread_notifications": {"notification_count": 5, "highlight_count": 1}}
    assert unread_sections(counts, True) == {
        "unread_notifications": {"notification_count": 3, "highlight_count": 1},
        "unread_thread_notifications": {"$t": {"notification_count": 2, "highlight_count": 0}},
    }
    assert unread_sections({}, True) == {"unread_notifications": {"notification_count": 0, "highlight_count": 0}}


def _pusher(**data: str) -> Pusher:
    return Pusher("@u:x", "app", "key", "http", "App", "Phone", None, "en",
                  {"url": "https://gw/_matrix/push/v1/notify", **data}, 5_000, 0)


def test_notify_body() -> None:
    pdu = {"type": "m.room.message", "room_id": "!r:x", "sender": "@s:y", "content": {"body": "hi"},
           "origin_server_ts": 1, "depth": 1, "prev_events": [], "auth_events": [], "hashes": {"sha256": "x"},
           "signatures": {}}
    event = Event.from_pdu(pdu, ROOM_V10)
    n = Notification("@u:x", event.event_id, "!r:x", 7, "main", True,
                     ["notify", {"set_tweak": "sound", "value": "default"}, {"set_tweak": "highlight"}], 0)
    body = notify_body(_pusher(), n, event, 4)["notification"]
    assert body["event_id"] == event.event_id and body["room_id"] == "!r:x"
    assert body["prio"] == "high" and body["counts"] == {"unread": 4}
    assert body["type"] == "m.room.message" and body["sender"] == "@s:y" and body["content"] == {"body": "hi"}
    assert body["devices"] == [{"app_id": "app", "pushkey": "key", "pushkey_ts": 5, "data": {},
                                "tweaks": {"sound": "default", "highlight": True}}]
    low = Notification("@u:x", event.event_id, "!r:x", 7, "main", False, ["notify"], 0)
    ids_only = notify_body(_pusher(format="event_id_only"), low, event, 1)["notification"]
    assert ids_only["prio"] == "low" and "content" not in ids_only and "sender" not in ids_only
    assert ids_only["devices"][0]["data"] == {"format": "event_id_only"}


async def test_stop_ends_a_pass_whose_cancellation_was_swallowed() -> None:
    """A call inside the pass that swallows the cancellation (seen once in CI: the server's
    shutdown then waited forever on the pass) leaves stop() bounded: the loop ends at its
    next turn."""
    from typing import Any

    from homeserver.push.notify import NotificationPass

    none: Any = None
    notify_pass = NotificationPass("x", none, none, none, none, none)
    entered = asyncio.Event()

    async def drain() -> None:
        entered.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            pass  # swallowed

    notify_pass._drain = drain  # type: ignore[method-assign]
    notify_pass.start()
    notify_pass._ready.set()
    await asyncio.wait_for(entered.wait(), 5)
    stopping = asyncio.ensure_future(notify_pass.stop())
    done, _ = await asyncio.wait({stopping}, timeout=3)
    if not done:
        stopping.cancel()
    assert stopping in done, "stop() waited forever on a pass that swallowed its cancellation"


async def test_stop_ends_pusher_workers_whose_cancellation_was_swallowed() -> None:
    """The push sender's workers likewise: stop() returns although a worker's call swallowed
    the cancellation."""
    from typing import Any

    from homeserver.push.sender import PushSender, _Worker

    entered = asyncio.Event()

    class Store:
        async def notifications_after(self, *args: Any) -> list[Any]:
            entered.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                pass  # swallowed
            return []

    none: Any = None
    sender = PushSender(Store(), none, none)  # type: ignore[arg-type]
    worker = _Worker(sender, _pusher())
    sender._workers[("@u:x", "app", "key")] = worker
    await asyncio.wait_for(entered.wait(), 5)
    stopping = asyncio.ensure_future(sender.stop())
    done, _ = await asyncio.wait({stopping}, timeout=3)
    if not done:
        stopping.cancel()
    assert stopping in done, "stop() waited forever on a worker that swallowed its cancellation"
    assert worker.task.done()
