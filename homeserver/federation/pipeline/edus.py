"""EDUs of the inbound worker: ``m.typing`` and ``m.receipt`` are written to their tables
for the client API, and /sync long-polls of their rooms are woken; anything else is
ignored."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from homeserver.metrics import Metrics
from homeserver.notifier import Notifier
from homeserver.rooms.acl import AclChecker
from homeserver.storage.receipts import ReceiptStore, ReceivedReceipt
from homeserver.storage.timeline import TimelineStore
from homeserver.util.clock import Clock

log = logging.getLogger(__name__)


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

    async def __call__(self, origin: str, edu: Mapping[str, Any]) -> None:
        """m.typing and m.receipt go to their tables (the door kept only the origin's own
        users), except those of rooms whose server ACL denies the origin."""
        content = edu.get("content")
        if not isinstance(content, dict):
            return
        now = self._clock.time_ms()
        if edu.get("edu_type") == "m.typing":
            room_id, user_id = content.get("room_id"), content.get("user_id")
            if not isinstance(room_id, str) or not isinstance(user_id, str):
                return
            if not await self._acl.allows(origin, room_id):
                self._metrics.inbound_edus_dropped.labels(origin, "acl").inc()
                return
            # Stopping expires the row now rather than deleting it: /sync reports
            # "stopped typing" as a change.
            await self._typing.set_typing(room_id, user_id, content.get("typing") is True, now)
            self._stored([room_id])
        elif edu.get("edu_type") == "m.receipt":
            receipts: list[ReceivedReceipt] = []
            for room_id, by_type in content.items():
                if not await self._acl.allows(origin, room_id):
                    self._metrics.inbound_edus_dropped.labels(origin, "acl").inc()
                    continue
                for receipt_type, by_user in by_type.items():
                    for user_id, receipt in by_user.items():
                        event_ids = receipt.get("event_ids")
                        data = receipt.get("data")
                        if not isinstance(event_ids, list) or not all(isinstance(e, str) for e in event_ids):
                            continue
                        data = data if isinstance(data, dict) else {}
                        thread = data.get("thread_id")
                        receipts.append(ReceivedReceipt(room_id, receipt_type, user_id,
                                                        thread if isinstance(thread, str) else "", event_ids, data))
            if receipts:
                await self._receipts.store_many(receipts, now)
                self._stored(dict.fromkeys(r.room_id for r in receipts))

    def _stored(self, room_ids: Iterable[str]) -> None:
        for room_id in room_ids:
            try:
                self._notifier.wake_room(room_id)
            except Exception:
                log.exception("notifying an EDU failed", extra={"room_id": room_id})
