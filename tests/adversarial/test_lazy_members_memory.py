"""Lazy loading's record of the member events each device was sent (``SentMembers``) is
bounded in members over all its entries, not only in entries and members per entry:
20,000 (user, device, room) entries of 5,000 members each (a remote server's puppets
talking in the rooms of a user with many devices) could hold gigabytes."""

from __future__ import annotations

from homeserver.client_api.sync_rooms import SentMembers


def test_members_bounded_over_all_entries() -> None:
    sent = SentMembers(max_entries=1000, max_total=10_000)
    for device in range(100):
        key = ("@victim:x", f"D{device}", "!big:x")
        sent.record(key, {f"@puppet{i}:evil": f"$e{i}" for i in range(1000)})
        assert sent.total <= 10_000
    assert len(sent) == 10
    # The most recent entries are kept, the oldest dropped.
    assert sent.was_sent(("@victim:x", "D99", "!big:x"), "@puppet5:evil", "$e5")
    assert not sent.was_sent(("@victim:x", "D0", "!big:x"), "@puppet5:evil", "$e5")
    # Re-recording and forgetting keep the count right.
    key = ("@victim:x", "D99", "!big:x")
    sent.record(key, {"@puppet5:evil": "$new"})
    assert sent.total == 10_000
    sent.forget(key)
    assert sent.total == 9_000
    # A key used recently survives the next eviction.
    assert sent.was_sent(("@victim:x", "D90", "!big:x"), "@puppet1:evil", "$e1")
    sent.record(("@victim:x", "NEW", "!big:x"), {f"@p{i}:evil": "$x" for i in range(2000)})
    assert sent.was_sent(("@victim:x", "D90", "!big:x"), "@puppet1:evil", "$e1")
    assert not sent.was_sent(("@victim:x", "D91", "!big:x"), "@puppet1:evil", "$e1")
