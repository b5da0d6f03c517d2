"""The push components of one server, built together: the store, the users' compiled
rules, the notification pass and the push sender (pushers' deliveries to their gateways).
``Services`` (app.py) builds one with ``PushServices.build``, starts it and stops it; the
client API reads and changes it. Built without ``post`` (a client API app made on its
own, in tests), no notification is pushed."""

from __future__ import annotations

from dataclasses import dataclass

from homeserver.push.notify import NotificationPass, StateSource, Wakes
from homeserver.push.rulebook import RuleBook
from homeserver.push.sender import Post, PushSender
from homeserver.storage.database import Database
from homeserver.storage.events import EventStore
from homeserver.storage.push import PushStore
from homeserver.util.clock import SYSTEM_CLOCK, Clock


@dataclass
class PushServices:
    store: PushStore
    rulebook: RuleBook
    notifications: NotificationPass
    sender: PushSender | None = None

    @classmethod
    def build(
        cls, server_name: str, db: Database, events: EventStore, state: StateSource, wakes: Wakes,
        *, post: Post | None = None, clock: Clock = SYSTEM_CLOCK,
    ) -> PushServices:
        store = PushStore(db)
        rulebook = RuleBook(store)
        notifications = NotificationPass(server_name, events, state, store, rulebook, wakes, clock=clock)
        sender = PushSender(store, events, post, clock=clock) if post is not None else None
        if sender is not None:
            notifications.listeners.append(sender.on_notified)
        return cls(store, rulebook, notifications, sender)

    async def start(self) -> None:
        self.notifications.start()
        if self.sender is not None:
            await self.sender.start()

    async def stop(self) -> None:
        if self.sender is not None:
            await self.sender.stop()
        await self.notifications.stop()

    async def pushers_changed(self) -> None:
        if self.sender is not None:
            await self.sender.reload_all()
