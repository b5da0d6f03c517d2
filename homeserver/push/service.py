"""The push components of one server, built together: the store, the users' compiled
rules, the notification pass and (when pushers exist) the push sender. ``Services``
(app.py) builds one with ``PushServices.build``, starts it and stops it; the client API
reads and changes it."""

from __future__ import annotations

from dataclasses import dataclass

from homeserver.push.notify import NotificationPass, StateSource, Wakes
from homeserver.push.rulebook import RuleBook
from homeserver.storage.database import Database
from homeserver.storage.events import EventStore
from homeserver.storage.push import PushStore
from homeserver.util.clock import SYSTEM_CLOCK, Clock


@dataclass
class PushServices:
    store: PushStore
    rulebook: RuleBook
    notifications: NotificationPass

    @classmethod
    def build(
        cls, server_name: str, db: Database, events: EventStore, state: StateSource, wakes: Wakes,
        *, clock: Clock = SYSTEM_CLOCK,
    ) -> PushServices:
        store = PushStore(db)
        rulebook = RuleBook(store)
        notifications = NotificationPass(server_name, events, state, store, rulebook, wakes, clock=clock)
        return cls(store, rulebook, notifications)

    def start(self) -> None:
        self.notifications.start()

    async def stop(self) -> None:
        await self.notifications.stop()
