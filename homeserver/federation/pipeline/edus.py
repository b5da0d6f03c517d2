"""EDUs of the inbound worker: ``m.typing`` and ``m.receipt`` are written to their tables
for the client API, and /sync long-polls of their rooms are woken; anything else is
ignored.

Only a server in the room speaks for it: an EDU about a room is kept only while the
origin has a joined member in the room's current state (the door kept only the origin's
own users). Sizes are bounded twice, at the door (``federation/transport.py``) and here:
a receipt keeps its event IDs (at most ``MAX_RECEIPT_EVENT_IDS``) and of its ``data``
only ``ts`` and ``thread_id``; a server has at most ``MAX_TYPING_PER_SERVER`` users
typing in a room at once."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from homeserver.metrics import Metrics
from homeserver.notifier import Notifier
from homeserver.rooms.acl import AclChecker
from homeserver.storage.receipts import ReceiptStore, ReceivedReceipt
from homeserver.storage.timeline import TimelineStore
from homeserver.util.clock import Clock

log = logging.getLogger(__name__)

# IDs in EDUs (rooms, users, events, receipt types, threads): the spec's bound on IDs.
MAX_EDU_ID_BYTES = 255
# Event IDs one receipt names (the spec's receipts name one).
MAX_RECEIPT_EVENT_IDS = 10
# Users of one server typing in one room at once; more are dropped until some stop.
MAX_TYPING_PER_SERVER = 50


def _short_id(value: object) -> bool:
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
        or not all(_short_id(e) for e in event_ids)
    ):
        return None
    data = receipt.get("data")
    kept: dict[str, Any] = {}
    if isinstance(data, Mapping):
        ts = data.get("ts")
        if isinstance(ts, int) and not isinstance(ts, bool):
            kept["ts"] = ts
        thread = data.get("thread_id")
        if _short_id(thread):
            kept["thread_id"] = thread
    return list(event_ids), kept


class EduHandler:
    def __init__(
        self, typing: TimelineStore, receipts: ReceiptStore, acl: AclChecker, metrics: Metrics, clock: Clock,
        notifier: Notifier,
    ) -> None:
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
        if edu.get("edu_type") == "m.typing":
            room_id, user_id = content.get("room_id"), content.get("user_id")
            if not _short_id(room_id) or not _short_id(user_id):
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
                if not _short_id(room_id) or not isinstance(by_type, dict):
                    continue
                if not await self._room_allows(origin, room_id):
                    continue
                for receipt_type, by_user in by_type.items():
                    if not _short_id(receipt_type) or not isinstance(by_user, dict):
                        continue
                    for user_id, receipt in by_user.items():
                        fields = receipt_fields(receipt)
                        if fields is None or not _short_id(user_id):
                            continue
                        event_ids, data = fields
                        receipts.append(ReceivedReceipt(room_id, receipt_type, user_id,
                                                        data.get("thread_id", ""), event_ids, data))
            if receipts:
                await self._receipts.store_many(receipts, now)
                self._stored(dict.fromkeys(r.room_id for r in receipts))

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
