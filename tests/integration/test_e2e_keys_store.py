"""The end-to-end keys store on both engines: 80 concurrent claims of a device's 50
one-time keys hand out each key exactly once, then the fallback key (kept, marked used);
the device-list stream positions grow with each change; a deleted device's keys are gone."""

from __future__ import annotations

import asyncio

from homeserver.storage.database import Database
from homeserver.storage.device_lists import DeviceListStore
from homeserver.storage.e2e_keys import E2eKeysStore, NewKey
from homeserver.storage.migrations import migrate

ALICE = "@alice:a.test"


async def test_concurrent_claims_hand_out_each_key_once(db: Database) -> None:
    await migrate(db)
    store = E2eKeysStore(db)
    keys = [NewKey("signed_curve25519", f"K{n:03d}", {"key": f"k{n}"}) for n in range(50)]
    assert await store.add_one_time_keys(ALICE, "D", keys, cap=1000) == []
    await store.set_fallback_keys(ALICE, "D", [NewKey("signed_curve25519", "FB", {"key": "fb"})])
    claimed = await asyncio.gather(*(store.claim(ALICE, "D", "signed_curve25519") for _ in range(80)))
    ids = [c[0] for c in claimed if c is not None]
    otks = [i for i in ids if i != "signed_curve25519:FB"]
    assert len(ids) == 80 and sorted(otks) == sorted(f"signed_curve25519:K{n:03d}" for n in range(50))
    assert ids.count("signed_curve25519:FB") == 30
    assert await store.one_time_key_counts(ALICE, "D") == {}
    assert await store.unused_fallback_key_types(ALICE, "D") == []
    # Uploading the same fallback key again keeps it used; a new one is unused.
    await store.set_fallback_keys(ALICE, "D", [NewKey("signed_curve25519", "FB", {"key": "fb"})])
    assert await store.unused_fallback_key_types(ALICE, "D") == []
    await store.set_fallback_keys(ALICE, "D", [NewKey("signed_curve25519", "FB2", {"key": "fb2"})])
    assert await store.unused_fallback_key_types(ALICE, "D") == ["signed_curve25519"]
    assert await store.claim(ALICE, "D", "other_algorithm") is None


async def test_stream_positions_and_deletion(db: Database) -> None:
    await migrate(db)
    store, lists = E2eKeysStore(db), DeviceListStore(db)
    first = await store.set_device_keys(ALICE, "D", {"user_id": ALICE, "device_id": "D", "keys": {}})
    assert first is not None
    assert await store.set_device_keys(ALICE, "D", {"user_id": ALICE, "device_id": "D", "keys": {}}) is None
    positions = await asyncio.gather(*(lists.bump(ALICE, f"X{n}") for n in range(20)))
    assert len(set(positions)) == 20 and min(positions) > first
    await store.add_one_time_keys(ALICE, "D", [NewKey("a", "1", "x")], cap=10)
    async with db.transaction() as conn:
        gone = await store.delete_device(conn, ALICE, "D")
    assert gone > max(positions) == gone - 1 and await lists.max_stream_id() == gone
    assert await store.device_key(ALICE, "D") is None and await store.one_time_key_counts(ALICE, "D") == {}
    assert await lists.last_device_positions(ALICE, 1) == [gone]
