"""Carrying a profile change into the user's member events, in the background.

``PUT /profile/{userId}/displayname|avatar_url`` stores the field and returns; this
module then sends, for each room the user is joined to, a new ``m.room.member`` join
whose ``displayname``/``avatar_url`` are the user's current profile (unset fields left
out), through ``RoomService.send_event`` like any other event of theirs. Bounds:

- one run per user at a time; a change made while a run is under way asks for one more
  run afterwards (each run reads the profile afresh, so the rooms converge on the latest);
- all runs share one pace: at most ``rooms_per_second`` member events per second over
  the whole server (10 by default), so a user in thousands of rooms, or many users
  renaming at once, never floods the rooms or their servers;
- rooms whose member event already carries the profile are skipped; a room that refuses
  the event (a ban meanwhile) is logged and skipped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from homeserver.rooms.errors import RoomError
from homeserver.rooms.service import RoomService
from homeserver.storage.users import UserStore
from homeserver.util.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)

FIELDS = ("displayname", "avatar_url")
DEFAULT_ROOMS_PER_SECOND = 10.0


def member_content_with_profile(current: dict[str, Any] | None, profile: dict[str, str]) -> dict[str, Any] | None:
    """The join content carrying ``profile``, or None when ``current`` already carries it.
    Keys other than the profile's and ``membership`` (a join reason) are not carried on."""
    current = current or {}
    if all(current.get(k) == profile.get(k) for k in FIELDS):
        return None
    out: dict[str, Any] = {"membership": "join"}
    out.update({k: v for k, v in profile.items() if k in FIELDS and isinstance(v, str)})
    return out


class ProfileFanout:
    def __init__(
        self, rooms: RoomService, *, rooms_per_second: float = DEFAULT_ROOMS_PER_SECOND,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.rooms = rooms
        self.interval = 1.0 / rooms_per_second if rooms_per_second > 0 else 0.0
        self.clock = clock
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._pace = asyncio.Lock()
        self._next_send = 0.0

    def schedule(self, user_id: str) -> None:
        """Carry ``user_id``'s current profile into their rooms (returns at once)."""
        if user_id in self._tasks:
            self._again.add(user_id)
            return
        self._tasks[user_id] = asyncio.get_running_loop().create_task(self._run(user_id))

    async def wait_idle(self) -> None:
        """Wait until no run is under way (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)
        self._tasks.clear()

    async def _run(self, user_id: str) -> None:
        try:
            while True:
                self._again.discard(user_id)
                try:
                    await self._carry(user_id)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("carrying a profile change failed", extra={"user_id": user_id})
                if user_id not in self._again:
                    return
        finally:
            self._tasks.pop(user_id, None)

    async def _carry(self, user_id: str) -> None:
        lookup = self.rooms.profile_lookup
        profile = dict(await lookup(user_id)) if lookup is not None else {}
        for room_id, membership in sorted((await self.rooms.rooms_for_user(user_id)).items()):
            if membership != "join":
                continue
            current = await self.rooms.get_state_event(room_id, "m.room.member", user_id)
            if current is None or current.content.get("membership") != "join":
                continue
            content = member_content_with_profile(dict(current.content), profile)
            if content is None:
                continue
            await self._wait_turn()
            try:
                await self.rooms.send_event(user_id, room_id, "m.room.member", content, state_key=user_id)
            except RoomError as e:
                log.info("profile change not carried into room", extra={"room_id": room_id, "error": str(e)})

    async def _wait_turn(self) -> None:
        async with self._pace:
            now = self.clock.monotonic()
            if self._next_send > now:
                await self.clock.sleep(self._next_send - now)
                now = self.clock.monotonic()
            self._next_send = now + self.interval


def profile_fields(users: UserStore) -> Callable[[str], Awaitable[dict[str, str]]]:
    """``RoomService.profile_lookup`` over the user store: a local user's set fields."""

    async def lookup(user_id: str) -> dict[str, str]:
        profile = await users.get_profile(user_id)
        if profile is None:
            return {}
        values = {"displayname": profile.displayname, "avatar_url": profile.avatar_url}
        return {k: v for k, v in values.items() if isinstance(v, str)}

    return lookup
