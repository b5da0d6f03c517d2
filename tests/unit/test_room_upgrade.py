"""rooms/upgrade.py's pure parts: the level a state event needs, and the old room's power
levels once it is tombstoned."""

from __future__ import annotations

from homeserver.rooms.upgrade import required_level, restricted_levels


def test_required_level() -> None:
    pl = {"events": {"m.room.tombstone": 150, "m.room.name": True}, "state_default": 60}
    assert required_level(pl, "m.room.tombstone") == 150
    assert required_level(pl, "m.room.topic") == 60
    assert required_level(pl, "m.room.name") == 50  # not an integer: the spec's default
    assert required_level({}, "m.room.tombstone") == 50


def test_restricted_levels() -> None:
    pl = {"users": {"@a:x": 100}, "events_default": 0, "invite": 0, "users_default": 0}
    out = restricted_levels(pl)
    assert (out["events_default"], out["invite"], out["users"]) == (50, 50, {"@a:x": 100})
    assert pl["events_default"] == 0  # the input is left alone
    out = restricted_levels({"users_default": 70, "events_default": 10, "invite": 80})
    assert (out["events_default"], out["invite"]) == (71, 80)
