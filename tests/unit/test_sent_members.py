"""The per-device record of member events sent under lazy loading (sync_rooms.SentMembers)."""

from __future__ import annotations

from homeserver.client_api import sync_rooms
from homeserver.client_api.sync_rooms import SentMembers


def test_records_per_device_and_room_and_notices_changes() -> None:
    sent = SentMembers()
    key = ("@a:x", "DEV", "!r:x")
    sent.record(key, {"@b:x": "$1"})
    assert sent.was_sent(key, "@b:x", "$1")
    assert not sent.was_sent(key, "@b:x", "$2")  # a new member event is sent again
    assert not sent.was_sent(("@a:x", "OTHER", "!r:x"), "@b:x", "$1")
    sent.forget(key)
    assert not sent.was_sent(key, "@b:x", "$1")


def test_bounded_in_entries_and_members() -> None:
    sent = SentMembers(max_entries=2)
    for room in ("!1:x", "!2:x", "!3:x"):
        sent.record(("@a:x", "D", room), {"@b:x": "$1"})
    assert not sent.was_sent(("@a:x", "D", "!1:x"), "@b:x", "$1")  # least recently used dropped
    assert sent.was_sent(("@a:x", "D", "!3:x"), "@b:x", "$1")
    key = ("@a:x", "D", "!big:x")
    sent.record(key, {f"@u{i}:x": "$e" for i in range(sync_rooms.MAX_MEMBERS_PER_ROOM)})
    sent.record(key, {"@late:x": "$l"})  # over the bound: starts afresh
    assert sent.was_sent(key, "@late:x", "$l") and not sent.was_sent(key, "@u0:x", "$e")
