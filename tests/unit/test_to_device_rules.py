"""The pure rules of send-to-device and key backup: EDUs split within their byte bound, each
with its own message_id; a session's backed-up key replaced only by a better one."""

from __future__ import annotations

from homeserver.client_api.to_device import MAX_EDU_BYTES, MAX_MESSAGE_BYTES, edu_chunks, encoded_size
from homeserver.storage.key_backup import SessionKey, should_replace
from homeserver.storage.to_device import Message


def test_edus_are_split_within_their_bound() -> None:
    big = {"ciphertext": "x" * (MAX_MESSAGE_BYTES - 100)}
    messages = [Message(f"@u{i}:b.test", f"D{j}", big) for i in range(3) for j in range(3)]
    chunks = edu_chunks("@alice:a.test", "m.room.encrypted", messages)
    assert len(chunks) > 1
    assert len({c["message_id"] for c in chunks}) == len(chunks)
    assert all(c["sender"] == "@alice:a.test" and c["type"] == "m.room.encrypted" for c in chunks)
    assert all(sum(encoded_size(m) for by in c["messages"].values() for m in by.values()) <= MAX_EDU_BYTES
               for c in chunks)
    delivered = sorted((u, d) for c in chunks for u, by in c["messages"].items() for d in by)
    assert delivered == sorted((m.user_id, m.device_id) for m in messages)
    # Small messages share one EDU.
    small = [Message("@bob:b.test", "*", {"n": 1}), Message("@carol:b.test", "D", {"n": 2})]
    assert [c["messages"] for c in edu_chunks("@alice:a.test", "m.x", small)] == [
        {"@bob:b.test": {"*": {"n": 1}}, "@carol:b.test": {"D": {"n": 2}}}]


def key(fmi: int, fc: int, verified: bool) -> SessionKey:
    return SessionKey(fmi, fc, verified, {})


def test_backup_replacement_rule() -> None:
    assert should_replace(key(9, 9, False), None)
    assert should_replace(key(9, 9, True), key(0, 0, False))  # verified first
    assert not should_replace(key(0, 0, False), key(9, 9, True))
    assert should_replace(key(1, 9, False), key(2, 0, False))  # then the lower index
    assert not should_replace(key(3, 0, False), key(2, 9, False))
    assert should_replace(key(2, 0, True), key(2, 1, True))  # then fewer forwards
    assert not should_replace(key(2, 1, True), key(2, 1, True))  # equal: the stored one stays
