"""EDUs of the inbound worker: ``m.typing`` and ``m.receipt`` are written to their tables
for the client API, and /sync long-polls of their rooms are woken; ``m.direct_to_device``
messages go to our devices' inboxes (``*``: every device of the user), once per
(origin, message_id), and wake their users' long-polls; anything else is ignored.

Only a server in the room speaks for it: an EDU about a room is kept only while the
origin has a joined member in the room's current state (the door kept only the origin's
own users). Sizes are bounded twice, at the door (``federation/transport.py``) and here:
a receipt keeps its event IDs (at most ``MAX_RECEIPT_EVENT_IDS``) and of its ``data``
only ``ts`` and ``thread_id``; a server has at most ``MAX_TYPING_PER_SERVER`` users
typing in a room at once. A to-device EDU is kept only when its sender is a user of the
origin (``to_device_edu``), each message's content within ``MAX_TO_DEVICE_BYTES``, at most
``MAX_TO_DEVICE_TARGETS`` devices; a repeated message_id is dropped (counted as
``duplicate``)."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from homeserver.events.identifiers import server_name_of
from homeserver.metrics import Metrics
from homeserver.notifier import Notifier
from homeserver.rooms.acl import AclChecker
from homeserver.storage.receipts import ReceiptStore, ReceivedReceipt
from homeserver.storage.timeline import TimelineStore
from homeserver.storage.to_device import Message, Stored, ToDeviceStore
from homeserver.util.clock import Clock

log = logging.getLogger(__name__)

# IDs in EDUs (rooms, users, events, receipt types, threads): the spec's bound on IDs.
MAX_EDU_ID_BYTES = 255
# Event IDs one receipt names (the spec's receipts name one).
MAX_RECEIPT_EVENT_IDS = 10
# Users of one server typing in one room at once; more are dropped until some stop.
MAX_TYPING_PER_SERVER = 50
# One to-device message's content (compact JSON), and the devices one EDU addresses.
MAX_TO_DEVICE_BYTES = 64 * 1024
MAX_TO_DEVICE_TARGETS = 10_000


def short_id(value: object) -> bool:
    """A non-empty string of at most ``MAX_EDU_ID_BYTES`` bytes (an ID inside an EDU)."""
    return isinstance(value, str) and 0 < len(value) and len(value.encode("utf-8", "surrogatepass")) <= MAX_EDU_ID_BYTES


def receipt_fields(receipt: object) -> tuple[list[str], dict[str, Any]] | None:
    """A received receipt's event IDs and the ``data`` we keep of it (``ts`` if an
    integer, ``thread_id`` if an ID); None if it names no event or too many."""
    if not isinstance(receipt, Mapping):
        return None
    event_ids = receipt.get("event_ids")
    if (
        not isinstance(event_ids, list)
        or not 0 < len(event_ids) <= MAX_RECEIPT_EVENT_IDS
        or not all(short_id(e) for e in event_ids)
    ):
        return None
    data = receipt.get("data")
    kept: dict[str, Any] = {}
    if isinstance(data, Mapping):
        ts = data.get("ts")
        if isinstance(ts, int) and not isinstance(ts, bool):
            kept["ts"] = ts
        thread = data.get("thread_id")
        if short_id(thread):
            kept["thread_id"] = thread
    return list(event_ids), kept


def to_device_edu(origin: str, content: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """An m.direct_to_device EDU's content as kept (only well-formed messages, within
    bounds), and why anything was dropped (a reason for ``hs_inbound_edus_dropped``).
    Refused whole when its sender is not a user of ``origin``."""
    sender = content.get("sender")
    if not short_id(sender) or not isinstance(sender, str) or server_name_of(sender) != origin \
            or not sender.startswith("@"):
        return None, "foreign_user"
    event_type, message_id, messages = content.get("type"), content.get("message_id"), content.get("messages")
    if not short_id(event_type) or not short_id(message_id) or not isinstance(messages, Mapping):
        return None, "malformed"
    kept: dict[str, dict[str, Any]] = {}
    count = 0
    malformed = False
    for user_id, by_device in messages.items():
        if not short_id(user_id) or not isinstance(by_device, Mapping):
            malformed = True
            continue
        for device_id, message in by_device.items():
            if (not short_id(device_id) or not isinstance(message, dict) or count >= MAX_TO_DEVICE_TARGETS
                    or len(json.dumps(message, separators=(",", ":"), ensure_ascii=False)) > MAX_TO_DEVICE_BYTES):
                malformed = True
                continue
            kept.setdefault(user_id, {})[device_id] = message
            count += 1
    if not kept:
        return None, "malformed"
    return ({"sender": sender, "type": event_type, "message_id": message_id, "messages": kept},
            "malformed" if malformed else None)


class EduHandler:
    def __init__(
        self, typing: TimelineStore, receipts: ReceiptStore, acl: AclChecker, metrics: Metrics, clock: Clock,
        notifier: Notifier, to_device: ToDeviceStore | None = None,
    ) -> None:
        self._to_device = to_device
        self._typing = typing
        self._receipts = receipts
        self._acl = acl
        self._metrics = metrics
        self._clock = clock
        # Called with a room ID after typing or receipts of that room were stored (wakes
        # /sync long-polls). Listeners must be quick and must not raise.
        self._notifier = notifier  # woken for a room once its typing or receipts are stored
        # Other EDU types (the door kept only the origin's own users): type -> handler
        # (origin, content), registered by app.py (the device-list EDUs: e2e/service.py).
        self.handlers: dict[str, Callable[[str, Mapping[str, Any]], Awaitable[None]]] = {}

    async def _room_allows(self, origin: str, room_id: str) -> bool:
        """The origin may speak for ``room_id``: its server ACL allows the origin, and the
        origin has a joined member there (current state). Counts the drops."""
        if not await self._acl.allows(origin, room_id):
            self._metrics.inbound_edus_dropped.labels(origin, "acl").inc()
            return False
        if not await self._receipts.server_in_room(room_id, origin):
            self._metrics.inbound_edus_dropped.labels(origin, "not_in_room").inc()
            return False
        return True

    async def __call__(self, origin: str, edu: Mapping[str, Any]) -> None:
        """m.typing and m.receipt go to their tables (the door kept only the origin's own
        users), except those of rooms whose server ACL denies the origin or where the
        origin has no joined member."""
        content = edu.get("content")
        if not isinstance(content, dict):
            return
        handler = self.handlers.get(str(edu.get("edu_type")))
        if handler is not None:
            await handler(origin, content)
            return
        now = self._clock.time_ms()
        if edu.get("edu_type") == "m.direct_to_device":
            await self._direct_to_device(origin, content, now)
        elif edu.get("edu_type") == "m.typing":
            room_id, user_id = content.get("room_id"), content.get("user_id")
            if not short_id(room_id) or not short_id(user_id):
                return
            assert isinstance(room_id, str) and isinstance(user_id, str)
            if not await self._room_allows(origin, room_id):
                return
            typing = content.get("typing") is True
            if typing and not await self._typing_slot(origin, room_id, user_id, now):
                self._metrics.inbound_edus_dropped.labels(origin, "too_many_typing").inc()
                return
            # Stopping expires the row now rather than deleting it: /sync reports
            # "stopped typing" as a change.
            await self._typing.set_typing(room_id, user_id, typing, now)
            self._stored([room_id])
        elif edu.get("edu_type") == "m.receipt":
            receipts: list[ReceivedReceipt] = []
            for room_id, by_type in content.items():
                if not short_id(room_id) or not isinstance(by_type, dict):
                    continue
                if not await self._room_allows(origin, room_id):
                    continue
                for receipt_type, by_user in by_type.items():
                    if not short_id(receipt_type) or not isinstance(by_user, dict):
                        continue
                    for user_id, receipt in by_user.items():
                        fields = receipt_fields(receipt)
                        if fields is None or not short_id(user_id):
                            continue
                        event_ids, data = fields
                        receipts.append(ReceivedReceipt(room_id, receipt_type, user_id,
                                                        data.get("thread_id", ""), event_ids, data))
            if receipts:
                await self._receipts.store_many(receipts, now)
                self._stored(dict.fromkeys(r.room_id for r in receipts))

    async def _direct_to_device(self, origin: str, content: Mapping[str, Any], now: int) -> None:
        """Deliver a to-device EDU (kept by the door: ``to_device_edu``) to our devices,
        once per (origin, message_id): the message_id is recorded in the transaction that
        stores the messages."""
        kept, _ = to_device_edu(origin, content)  # the door checked; the inbox is ours, but cheap
        if kept is None or self._to_device is None:
            return
        messages = [Message(u, d, c) for u, by_device in kept["messages"].items() for d, c in by_device.items()]
        store = self._to_device
        async with store.db.transaction() as conn:
            if not await store.claim_received(conn, origin, kept["message_id"], now):
                self._metrics.inbound_edus_dropped.labels(origin, "duplicate").inc()
                return
            stored = await store.add(conn, kept["sender"], kept["type"], kept["message_id"], messages)
            conn.call_after(lambda: self._delivered(stored))

    def _delivered(self, stored: Stored) -> None:
        for user_id in {u for u, _ in stored.devices}:
            self._notifier.wake_user(user_id)
        if stored.dropped:
            self._metrics.to_device_dropped.labels("queue_full").inc(stored.dropped)

    async def _typing_slot(self, origin: str, room_id: str, user_id: str, now: int) -> bool:
        """Whether ``user_id`` may be shown typing: already is, or its server has fewer
        than ``MAX_TYPING_PER_SERVER`` users typing in the room."""
        typing = await self._typing.typing_users(room_id, now)
        if user_id in typing:
            return True
        suffix = ":" + origin
        return sum(1 for u in typing if u.endswith(suffix)) < MAX_TYPING_PER_SERVER

    def _stored(self, room_ids: Iterable[str]) -> None:
        for room_id in room_ids:
            try:
                self._notifier.wake_room(room_id)
            except Exception:
                log.exception("notifying an EDU failed", extra={"room_id": room_id})
