"""Wakes /sync long-polls when something they would return has happened.

One notifier per server, made and owned by ``Services`` (``app.py``) and handed to whoever
has news: the persister calls ``on_event`` after each event's transaction commits; the
room service and the inbound pipeline call ``on_invite`` for invites and knocks held
outside room state; the typing and receipt handlers (local and inbound) call
``wake_room``. A waiting /sync is woken only by its own rooms and by member events about
its user (an invite to a new room). No database polling: a long-poll that nothing wakes
sleeps until its timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from homeserver.events.event import Event
from homeserver.storage.events import Outcome
from homeserver.util.clock import SYSTEM_CLOCK, Clock


class Waiter:
    def __init__(self, notifier: Notifier, user_id: str) -> None:
        self._notifier = notifier
        self.user_id = user_id
        self.rooms: set[str] = set()
        self.woken = asyncio.Event()

    def watch_rooms(self, rooms: Iterable[str]) -> None:
        self._notifier._set_rooms(self, set(rooms))

    async def wait(self, timeout: float) -> bool:
        """Wait until woken or ``timeout`` seconds of the notifier's clock pass; True when
        woken."""
        if self.woken.is_set():
            return True
        woken = asyncio.ensure_future(self.woken.wait())
        timer = asyncio.ensure_future(self._notifier.clock.sleep(timeout))
        try:
            await asyncio.wait((woken, timer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
            timer.cancel()
        return self.woken.is_set()


class Notifier:
    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self.clock = clock
        self._by_user: dict[str, set[Waiter]] = {}
        self._by_room: dict[str, set[Waiter]] = {}
        # Also told of each committed event (the push notification pass): quick, never raising.
        self.event_listeners: list[Callable[[Event, Outcome, int], None]] = []
        # Told of every accepted event after its commit (presence: who joined); must be quick
        # and must not raise.
        self.accepted_listeners: list[Callable[[Event], None]] = []

    def waiter(self, user_id: str) -> Waiter:
        """Register before reading the database, so nothing committed afterwards is missed."""
        w = Waiter(self, user_id)
        self._by_user.setdefault(user_id, set()).add(w)
        return w

    def release(self, w: Waiter) -> None:
        self._set_rooms(w, set())
        users = self._by_user.get(w.user_id)
        if users is not None:
            users.discard(w)
            if not users:
                del self._by_user[w.user_id]

    def _set_rooms(self, w: Waiter, rooms: set[str]) -> None:
        for room in w.rooms - rooms:
            waiters = self._by_room.get(room)
            if waiters is not None:
                waiters.discard(w)
                if not waiters:
                    del self._by_room[room]
        for room in rooms - w.rooms:
            self._by_room.setdefault(room, set()).add(w)
        w.rooms = rooms

    def on_event(self, event: Event, outcome: Outcome, stream_ordering: int) -> None:
        for listener in self.event_listeners:
            listener(event, outcome, stream_ordering)
        if outcome is Outcome.REJECTED or outcome is Outcome.SOFT_FAILED:
            return
        if outcome is Outcome.ACCEPTED:
            self.wake_room(event.room_id)
            for accepted in self.accepted_listeners:
                accepted(event)
        if event.type == "m.room.member" and event.state_key is not None:
            self.wake_user(event.state_key)

    def wake_room(self, room_id: str) -> None:
        for w in self._by_room.get(room_id, ()):
            w.woken.set()

    def on_invite(self, user_id: str, room_id: str) -> None:
        """An invite (or knock, or its end) for ``user_id`` held outside room state."""
        self.wake_user(user_id)

    def wake_user(self, user_id: str) -> None:
        for w in self._by_user.get(user_id, ()):
            w.woken.set()

    def is_waiting(self, user_id: str) -> bool:
        """Whether a /sync of ``user_id`` is in flight (presence counts it as seen)."""
        return user_id in self._by_user

    @property
    def waiting(self) -> int:
        return sum(len(ws) for ws in self._by_user.values())
