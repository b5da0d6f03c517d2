"""Element's encryption across two of our servers, with Element's own SDK (matrix-js-sdk 43 and
its Rust crypto, tests/e2e_js) on both engines; each user on their own server:

- both users decrypt each other's messages in a new encrypted room, and accepting the invite
  with crypto enabled raises no error;
- the same in an encrypted direct chat (is_direct invite, m.direct account data);
- a second device of the same user receives the room keys by to-device and decrypts;
- cross-signing bootstrap succeeds (the first upload without user-interactive auth, a reset
  behind it), and the other user sees the keys and the signature of the device;
- a key backup is created and restores the session on a new device, which decrypts an old message.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest

from homeserver.server import RunningServer
from tests.clients import base_url, raw
from tests.element import assert_passed, ensure_installed, explain, run_scenario, step, user

V3 = "/_matrix/client/v3"
PASSWORD = "element e2ee pass"


@pytest.fixture(scope="session")
def node() -> Path:
    return ensure_installed()


async def register(server: RunningServer, prefix: str) -> dict[str, str]:
    localpart = prefix + secrets.token_hex(3)
    status, body = await raw(server, "POST", f"{V3}/register", json={
        "username": localpart, "password": PASSWORD, "auth": {"type": "m.login.dummy"}})
    assert status == 200, body
    return user(base_url(server), body["user_id"], PASSWORD)


async def scenario(node: Path, pair: tuple[RunningServer, RunningServer], name: str, **extra: Any) -> dict[str, Any]:
    a, b = pair
    alice, bob = await register(a, "alice"), await register(b, "bob")
    result = await run_scenario(node, name, alice, bob, **extra)
    result["users"] = [alice["userId"], bob["userId"]]
    return result


async def test_encrypted_room_both_ways(node: Path, pair: tuple[RunningServer, RunningServer]) -> None:
    result = await scenario(node, pair, "room")
    step(result, "b accepts invite")  # the SDK's key queries after /join did not fail
    assert step(result, "a -> b encrypted")["encrypted"]
    assert step(result, "b -> a encrypted")["encrypted"]
    assert_passed(result)


async def test_encrypted_direct_chat(node: Path, pair: tuple[RunningServer, RunningServer]) -> None:
    result = await scenario(node, pair, "room", direct=True)
    assert step(result, "b accepts invite")["invite_is_direct"], explain(result)
    step(result, "a -> b encrypted")
    step(result, "b -> a encrypted")
    room_id = step(result, "a creates encrypted room")["room_id"]
    alice, bob = result["users"]
    seen = step(result, "m.direct account data")
    assert seen["a_direct"] == {bob: [room_id]} and seen["b_direct"] == {alice: [room_id]}, seen
    assert_passed(result)


async def test_second_device_receives_room_keys(node: Path, pair: tuple[RunningServer, RunningServer]) -> None:
    result = await scenario(node, pair, "second_device")
    step(result, "a sees b's second device (device_lists)")
    step(result, "second device decrypts a new message")
    assert_passed(result)


async def test_cross_signing_seen_by_the_other_user(node: Path, pair: tuple[RunningServer, RunningServer]) -> None:
    result = await scenario(node, pair, "cross_signing")
    assert not step(result, "a bootstraps cross-signing")["first_upload_asked_uia"]
    keys = step(result, "b sees a's cross-signing keys")
    assert keys["has_master"] and keys["has_self_signing"]
    signed = step(result, "b sees a's device signed by a's self-signing key")
    assert signed["signed_by_owner"] and signed["raw_has_master"] and signed["raw_device_signed_by_ssk"]
    assert step(result, "a's reset of cross-signing is behind UIA")["reset_asked_uia"]
    assert_passed(result)


async def test_key_backup_restores_on_new_device(node: Path, pair: tuple[RunningServer, RunningServer]) -> None:
    result = await scenario(node, pair, "backup")
    step(result, "room key reaches the backup")
    restored = step(result, "new device restores the backup")
    assert restored["imported"] >= 1 and restored["imported"] == restored["total"], restored
    step(result, "new device decrypts the old message")
    assert_passed(result)


async def test_threads_with_element(node: Path, pair: tuple[RunningServer, RunningServer]) -> None:
    """A thread reply from B shows in A's thread (Element's SDK with thread support); the
    syncs that carry the thread raise nothing; /threads lists the root."""
    result = await scenario(node, pair, "threads")
    assert step(result, "a sees the thread")["last_reply"] == "in the thread", explain(result)
    assert len(step(result, "a's thread list")["roots"]) == 1
    assert not [e for e in result["http_errors"] if "/relations/" in e[1] or "/threads" in e[1]], result["http_errors"]
    assert_passed(result)
