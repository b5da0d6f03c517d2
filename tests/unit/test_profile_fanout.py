"""The join content a profile change sends (profile_fanout.member_content_with_profile)."""

from __future__ import annotations

from typing import Any

from homeserver.client_api.profile_fanout import ProfileFanout, member_content_with_profile
from homeserver.util.clock import FakeClock


def test_unchanged_profile_sends_nothing() -> None:
    current = {"membership": "join", "displayname": "a", "avatar_url": "mxc://x/y"}
    assert member_content_with_profile(current, {"displayname": "a", "avatar_url": "mxc://x/y"}) is None


def test_new_name_keeps_the_avatar_and_drops_other_keys() -> None:
    current = {"membership": "join", "displayname": "a", "avatar_url": "mxc://x/y", "reason": "hi"}
    assert member_content_with_profile(current, {"displayname": "b", "avatar_url": "mxc://x/y"}) == {
        "membership": "join", "displayname": "b", "avatar_url": "mxc://x/y"}


def test_unset_field_is_left_out() -> None:
    current = {"membership": "join", "displayname": "a", "avatar_url": "mxc://x/y"}
    assert member_content_with_profile(current, {"displayname": "a"}) == {"membership": "join", "displayname": "a"}
    assert member_content_with_profile({"membership": "join"}, {}) is None


class _Event:
    def __init__(self, content: dict[str, Any]) -> None:
        self.content = content


class _Rooms:
    """What ProfileFanout uses of the room service: the rooms, member events, sending."""

    def __init__(self, rooms: int) -> None:
        self.profile = {"displayname": "new"}
        self.members = {f"!r{i}:x": {"membership": "join", "displayname": "old"} for i in range(rooms)}
        self.members["!left:x"] = {"membership": "leave"}
        self.sent: list[str] = []

    async def profile_lookup(self, user_id: str) -> dict[str, str]:
        return dict(self.profile)

    async def rooms_for_user(self, user_id: str) -> dict[str, str]:
        return {r: c["membership"] for r, c in self.members.items()}

    async def get_state_event(self, room_id: str, event_type: str, state_key: str) -> _Event:
        return _Event(self.members[room_id])

    async def send_event(self, sender: str, room_id: str, event_type: str, content: dict[str, Any],
                         state_key: str | None = None) -> None:
        self.members[room_id] = dict(content)
        self.sent.append(room_id)


async def test_fanout_is_paced_and_converges_on_the_latest_profile() -> None:
    clock = FakeClock()
    rooms = _Rooms(25)
    fanout = ProfileFanout(rooms, rooms_per_second=10, clock=clock)  # type: ignore[arg-type]
    fanout.schedule("@u:x")
    await clock.advance(0)
    assert len(rooms.sent) == 1  # the first at once, then one each 0.1 s
    await clock.advance(1.0)
    assert 10 <= len(rooms.sent) <= 11  # not all 25 at once
    # A change while the run is under way: one more run after it, with the newest profile.
    rooms.profile = {"displayname": "newer", "avatar_url": "mxc://x/y"}
    fanout.schedule("@u:x")
    for _ in range(60):
        await clock.advance(0.1)
    await fanout.wait_idle()
    assert rooms.members["!left:x"] == {"membership": "leave"}
    assert all(c == {"membership": "join", "displayname": "newer", "avatar_url": "mxc://x/y"}
               for r, c in rooms.members.items() if r != "!left:x")
    assert len(rooms.sent) == 25 + 25  # each room once per run, none twice in one run
