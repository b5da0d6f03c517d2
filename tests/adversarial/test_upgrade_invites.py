"""Upgrading a private room invites its members into the new room. The invites went one
by one, each remote one waiting for its server to countersign: a thousand members on slow
or dead servers held the upgrade request (and the room's upgrade lock) for hours. Now at
most ``MAX_INVITED``, ours first, remote ones ``INVITE_CONCURRENCY`` at a time within
``INVITE_SECONDS``."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from homeserver.rooms import upgrade
from homeserver.rooms.errors import NotAllowed


class SlowServers:
    """Stands in for RoomService.invite: ours answer at once, one refuses, the others'
    servers never answer."""

    def __init__(self) -> None:
        self.invited: list[str] = []
        self.running = 0
        self.most = 0

    async def invite(self, sender: str, room_id: str, target: str, **_: Any) -> None:
        if target.endswith(":ours"):
            self.invited.append(target)
            return
        if target.startswith("@refuses"):
            raise NotAllowed("no")
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await asyncio.sleep(3600)
        finally:
            self.running -= 1


async def test_invites_are_bounded_in_number_time_and_concurrency(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upgrade, "INVITE_SECONDS", 0.3)
    rooms = SlowServers()
    remote = [f"@u{i}:dead{i % 7}.example" for i in range(2000)]
    local = [f"@l{i}:ours" for i in range(5)]
    started = time.monotonic()
    await upgrade.invite_members(rooms, "@admin:ours", "!new:ours", ["@refuses:x", *remote, *local])  # type: ignore[arg-type]
    assert time.monotonic() - started < 2
    assert rooms.invited == local  # ours first, all of them
    assert rooms.most == upgrade.INVITE_CONCURRENCY
    assert rooms.running == 0  # nothing left waiting
