"""End-to-end keys on one server (both engines, real HTTP, real ed25519 signatures):
upload, query, claim (a one-time key handed out once under concurrent claims; the fallback
key when none is left), /keys/changes and /sync's device lists (a waiting /sync woken),
one-time key counts and unused fallback key types, cross-signing (first upload without
user-interactive auth, a replacement behind the password), signatures seen by another
user, a deleted device's keys gone, and every bad input answered with its Matrix error."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey
from nio import JoinResponse, RoomCreateResponse

from tests.clients import client_server, nio_user, raw
from tests.conftest import DatabaseFactory
from tests.e2e_keys_helpers import (
    PASSWORD,
    V3,
    cross_signing_key,
    device_keys,
    one_time_keys,
    password_auth,
    public,
    sign,
)


async def _sync(server: Any, token: str, since: str | None = None, timeout: int = 0) -> dict[str, Any]:
    path = f"{V3}/sync?timeout={timeout}" + (f"&since={since}" if since else "")
    status, body = await raw(server, "GET", path, token=token)
    assert status == 200, body
    return body


async def test_upload_query_claim_changes_and_deletion(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    async with client_server(db_factory, tmp_path / "a", test_ca) as server, \
            nio_user(server, "alice") as alice, nio_user(server, "bob") as bob:
        created = await alice.room_create(name="Secret", invite=[bob.user_id])
        assert isinstance(created, RoomCreateResponse), created
        before_join = (await _sync(server, alice.access_token))["next_batch"]
        assert isinstance(await bob.join(created.room_id), JoinResponse)
        # Bob now shares a room with Alice: he is in her device_lists.changed.
        synced = await _sync(server, alice.access_token, before_join)
        assert synced["device_lists"] == {"changed": [bob.user_id], "left": []}
        a_sk = SigningKey.generate()
        upload = {"device_keys": device_keys(alice.user_id, alice.device_id, a_sk),
                  "one_time_keys": one_time_keys(alice.user_id, alice.device_id, a_sk, 3),
                  "fallback_keys": {"signed_curve25519:FB1": sign({"key": "fallback", "fallback": True},
                                                                   alice.user_id, f"ed25519:{alice.device_id}", a_sk)}}
        status, body = await raw(server, "POST", f"{V3}/keys/upload", token=alice.access_token, json=upload)
        assert status == 200 and body == {"one_time_key_counts": {"signed_curve25519": 3}}, body
        # The same upload again changes nothing.
        status, body = await raw(server, "POST", f"{V3}/keys/upload", token=alice.access_token, json=upload)
        assert status == 200 and body["one_time_key_counts"] == {"signed_curve25519": 3}

        synced = await _sync(server, alice.access_token)
        assert synced["device_one_time_keys_count"] == {"signed_curve25519": 3}
        assert synced["device_unused_fallback_key_types"] == ["signed_curve25519"]

        # Bob queries Alice's keys.
        status, body = await raw(server, "POST", f"{V3}/keys/query", token=bob.access_token,
                                 json={"device_keys": {alice.user_id: []}})
        assert status == 200, body
        got = body["device_keys"][alice.user_id][alice.device_id]
        assert got["keys"] == upload["device_keys"]["keys"] and got["signatures"] == upload["device_keys"]["signatures"]
        assert body["failures"] == {}

        # Eight concurrent claims: the three one-time keys go out once each, then the fallback key.
        async def claim() -> dict[str, Any]:
            status, body = await raw(server, "POST", f"{V3}/keys/claim", token=bob.access_token, json={
                "one_time_keys": {alice.user_id: {alice.device_id: "signed_curve25519"}}})
            assert status == 200, body
            (key_id,) = body["one_time_keys"][alice.user_id][alice.device_id]
            return {key_id: body["one_time_keys"][alice.user_id][alice.device_id][key_id]}
        claimed = await asyncio.gather(*(claim() for _ in range(8)))
        ids = [next(iter(c)) for c in claimed]
        otks = [i for i in ids if i != "signed_curve25519:FB1"]
        assert sorted(otks) == sorted(upload["one_time_keys"]) and ids.count("signed_curve25519:FB1") == 5
        synced = await _sync(server, alice.access_token)
        assert synced["device_one_time_keys_count"] == {"signed_curve25519": 0}
        assert synced["device_unused_fallback_key_types"] == []
        # A new fallback key is unused again.
        status, _ = await raw(server, "POST", f"{V3}/keys/upload", token=alice.access_token, json={
            "fallback_keys": {"signed_curve25519:FB2": {"key": "fb2", "fallback": True}}})
        assert status == 200
        synced = await _sync(server, alice.access_token)
        assert synced["device_unused_fallback_key_types"] == ["signed_curve25519"]

        # Alice's second device: Bob's waiting /sync is woken with Alice in device_lists.changed,
        # and /keys/changes says the same.
        status, phone = await raw(server, "POST", f"{V3}/login", json={
            "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"},
            "password": PASSWORD, "initial_device_display_name": "phone"})
        assert status == 200, phone
        since = (await _sync(server, bob.access_token))["next_batch"]
        waiting = asyncio.ensure_future(_sync(server, bob.access_token, since, timeout=20_000))
        await asyncio.sleep(0.2)
        p_sk = SigningKey.generate()
        status, _ = await raw(server, "POST", f"{V3}/keys/upload", token=phone["access_token"], json={
            "device_keys": device_keys(alice.user_id, phone["device_id"], p_sk),
            "one_time_keys": one_time_keys(alice.user_id, phone["device_id"], p_sk, 2)})
        assert status == 200
        woken = await waiting
        assert alice.user_id in woken["device_lists"]["changed"]
        status, changes = await raw(server, "GET", f"{V3}/keys/changes?from={since}&to={woken['next_batch']}",
                                    token=bob.access_token)
        assert status == 200 and alice.user_id in changes["changed"], changes
        status, body = await raw(server, "POST", f"{V3}/keys/query", token=bob.access_token,
                                 json={"device_keys": {alice.user_id: [phone["device_id"]]}})
        assert set(body["device_keys"][alice.user_id]) == {phone["device_id"]}
        assert body["device_keys"][alice.user_id][phone["device_id"]]["unsigned"] == {"device_display_name": "phone"}
        # Renaming the phone is a device-list change too.
        since = woken["next_batch"]
        status, _ = await raw(server, "PUT", f"{V3}/devices/{phone['device_id']}", token=phone["access_token"],
                              json={"display_name": "new phone"})
        assert status == 200
        synced = await _sync(server, bob.access_token, since)
        assert alice.user_id in synced["device_lists"]["changed"]
        status, body = await raw(server, "POST", f"{V3}/keys/query", token=bob.access_token,
                                 json={"device_keys": {alice.user_id: [phone["device_id"]]}})
        assert body["device_keys"][alice.user_id][phone["device_id"]]["unsigned"] == {
            "device_display_name": "new phone"}

        # Deleting the phone removes its keys and one-time keys, and Bob hears of it.
        since = synced["next_batch"]
        path = f"{V3}/devices/{phone['device_id']}"
        status, flow = await raw(server, "DELETE", path, token=alice.access_token)
        assert status == 401
        status, _ = await raw(server, "DELETE", path, token=alice.access_token,
                              json={"auth": password_auth(alice.user_id, flow["session"])})
        assert status == 200
        status, body = await raw(server, "POST", f"{V3}/keys/query", token=bob.access_token,
                                 json={"device_keys": {alice.user_id: []}})
        assert set(body["device_keys"][alice.user_id]) == {alice.device_id}
        status, body = await raw(server, "POST", f"{V3}/keys/claim", token=bob.access_token, json={
            "one_time_keys": {alice.user_id: {phone["device_id"]: "signed_curve25519"}}})
        assert status == 200 and body["one_time_keys"] == {}
        synced = await _sync(server, bob.access_token, since)
        assert alice.user_id in synced["device_lists"]["changed"]

        # Bob leaves the only room they shared: he is in Alice's device_lists.left.
        since = (await _sync(server, alice.access_token))["next_batch"]
        status, _ = await raw(server, "POST", f"{V3}/rooms/{created.room_id}/leave", token=bob.access_token, json={})
        assert status == 200
        synced = await _sync(server, alice.access_token, since)
        assert synced["device_lists"]["left"] == [bob.user_id]
        assert bob.user_id not in synced["device_lists"]["changed"]


async def test_bad_input(db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]) -> None:
    async with client_server(db_factory, tmp_path / "a", test_ca) as server, \
            nio_user(server, "alice") as alice, nio_user(server, "bob") as bob:
        sk = SigningKey.generate()
        mine = device_keys(alice.user_id, alice.device_id, sk)
        status, _ = await raw(server, "POST", f"{V3}/keys/upload", token=alice.access_token, json={
            "device_keys": mine, "one_time_keys": one_time_keys(alice.user_id, alice.device_id, sk, 2)})
        assert status == 200
        cases: list[tuple[str, Any, int, str]] = [
            ("upload", {"device_keys": device_keys(bob.user_id, alice.device_id, sk)}, 400, "M_BAD_JSON"),
            ("upload", {"device_keys": device_keys(alice.user_id, "OTHER", sk)}, 400, "M_BAD_JSON"),
            ("upload", {"device_keys": {**mine, "keys": "nope"}}, 400, "M_BAD_JSON"),
            ("upload", {"device_keys": []}, 400, "M_BAD_JSON"),
            ("upload", {"one_time_keys": one_time_keys(alice.user_id, alice.device_id, sk, 101, 10)},
             413, "M_TOO_LARGE"),
            ("upload", {"one_time_keys": {"no_colon": "abc"}}, 400, "M_INVALID_PARAM"),
            ("upload", {"one_time_keys": {"bad algo:AAAA": "abc"}}, 400, "M_INVALID_PARAM"),
            ("upload", {"one_time_keys": {"signed_curve25519:A B": "abc"}}, 400, "M_INVALID_PARAM"),
            ("upload", {"one_time_keys": {":AAAA": "abc"}}, 400, "M_INVALID_PARAM"),
            ("upload", {"one_time_keys": {"signed_curve25519:X": 5}}, 400, "M_BAD_JSON"),
            ("upload", {"one_time_keys": {"signed_curve25519:BIG": {"key": "x" * 10_000}}}, 413, "M_TOO_LARGE"),
            # The same key ID with another content: refused, the stored key kept.
            ("upload", {"one_time_keys": {"signed_curve25519:K0000": {"key": "other"}}}, 400, "M_BAD_JSON"),
            ("upload", {"fallback_keys": {"signed_curve25519:A": "a", "signed_curve25519:B": "b"}},
             400, "M_INVALID_PARAM"),
            ("query", {"device_keys": []}, 400, "M_BAD_JSON"),
            ("query", {"device_keys": {"not-a-user": []}}, 400, "M_INVALID_PARAM"),
            ("query", {"device_keys": {alice.user_id: "all"}}, 400, "M_BAD_JSON"),
            ("query", {}, 400, "M_BAD_JSON"),
            ("query", {"device_keys": {}, "timeout": "soon"}, 400, "M_BAD_JSON"),
            ("claim", {"one_time_keys": {}, "timeout": -1}, 400, "M_BAD_JSON"),
            ("claim", {"one_time_keys": {alice.user_id: {alice.device_id: 5}}}, 400, "M_INVALID_PARAM"),
            ("claim", {"one_time_keys": {alice.user_id: {alice.device_id: "bad:algo"}}}, 400, "M_INVALID_PARAM"),
            ("claim", {"one_time_keys": {alice.user_id: []}}, 400, "M_BAD_JSON"),
            ("claim", {"one_time_keys": {f"@u{n}:x": {"D": "a"} for n in range(1001)}}, 413, "M_TOO_LARGE"),
            ("device_signing/upload", {}, 400, "M_BAD_JSON"),
            ("device_signing/upload", {"master_key": {"user_id": bob.user_id, "usage": ["master"],
                                                      "keys": {"ed25519:A": "A"}}}, 400, "M_BAD_JSON"),
            ("device_signing/upload", {"master_key": {"user_id": alice.user_id, "usage": ["master"],
                                                      "keys": {"ed25519:A": "B"}}}, 400, "M_INVALID_PARAM"),
            ("signatures/upload", {alice.user_id: {alice.device_id: "x"}}, 400, "M_BAD_JSON"),
            ("signatures/upload", {"nobody": {}}, 400, "M_BAD_JSON"),
        ]
        for endpoint, payload, want_status, errcode in cases:
            status, body = await raw(server, "POST", f"{V3}/keys/{endpoint}", token=alice.access_token, json=payload)
            assert (status, body.get("errcode")) == (want_status, errcode), (endpoint, payload, body)
        for endpoint in ("upload", "query", "claim", "device_signing/upload", "signatures/upload"):
            status, body = await raw(server, "POST", f"{V3}/keys/{endpoint}", token=alice.access_token,
                                     data=b"{not json")
            assert status == 400 and body["errcode"] == "M_NOT_JSON", (endpoint, body)
        status, body = await raw(server, "GET", f"{V3}/keys/changes?from=bad&to=s1_1_1_1_1", token=alice.access_token)
        assert status == 400 and body["errcode"] == "M_INVALID_PARAM"
        status, body = await raw(server, "GET", f"{V3}/keys/changes", token=alice.access_token)
        assert status == 400 and body["errcode"] == "M_MISSING_PARAM"
        # Nothing stored was lost.
        status, body = await raw(server, "POST", f"{V3}/keys/upload", token=alice.access_token, json={})
        assert body["one_time_key_counts"] == {"signed_curve25519": 2}
        status, body = await raw(server, "POST", f"{V3}/keys/query", token=bob.access_token,
                                 json={"device_keys": {alice.user_id: []}})
        assert body["device_keys"][alice.user_id][alice.device_id]["keys"] == mine["keys"]


async def test_cross_signing_and_signatures(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    async with client_server(db_factory, tmp_path / "a", test_ca) as server, \
            nio_user(server, "alice") as alice, nio_user(server, "bob") as bob:
        dev_sk = SigningKey.generate()
        mine = device_keys(alice.user_id, alice.device_id, dev_sk)
        status, _ = await raw(server, "POST", f"{V3}/keys/upload", token=alice.access_token, json={"device_keys": mine})
        assert status == 200
        master, self_signing, user_signing = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()
        keys = {"master_key": cross_signing_key(alice.user_id, "master", master, None),
                "self_signing_key": cross_signing_key(alice.user_id, "self_signing", self_signing, master),
                "user_signing_key": cross_signing_key(alice.user_id, "user_signing", user_signing, master)}
        # The first upload needs no password.
        status, body = await raw(server, "POST", f"{V3}/keys/device_signing/upload", token=alice.access_token,
                                 json=keys)
        assert status == 200, body
        # A self-signing key not signed by the master key is refused.
        status, body = await raw(server, "POST", f"{V3}/keys/device_signing/upload", token=alice.access_token,
                                 json={"self_signing_key": cross_signing_key(alice.user_id, "self_signing",
                                                                            SigningKey.generate(), None)})
        assert status == 400 and body["errcode"] == "M_INVALID_PARAM"
        # Replacing the master key asks for the password (401 flow), then succeeds.
        master2 = SigningKey.generate()
        replace = {"master_key": cross_signing_key(alice.user_id, "master", master2, None),
                   "self_signing_key": cross_signing_key(alice.user_id, "self_signing", self_signing, master2)}
        status, flow = await raw(server, "POST", f"{V3}/keys/device_signing/upload", token=alice.access_token,
                                 json=replace)
        assert status == 401 and flow["flows"] == [{"stages": ["m.login.password"]}], flow
        status, body = await raw(server, "POST", f"{V3}/keys/device_signing/upload", token=alice.access_token,
                                 json={**replace, "auth": password_auth(alice.user_id, flow["session"])})
        assert status == 200, body

        # Alice's self-signing key signs her device; Bob sees the signature and her master key.
        signed = sign(dict(mine), alice.user_id, f"ed25519:{public(self_signing)}", self_signing)
        status, body = await raw(server, "POST", f"{V3}/keys/signatures/upload", token=alice.access_token,
                                 json={alice.user_id: {alice.device_id: signed}})
        assert status == 200 and body["failures"] == {}, body
        status, body = await raw(server, "POST", f"{V3}/keys/query", token=bob.access_token,
                                 json={"device_keys": {alice.user_id: []}})
        sigs = body["device_keys"][alice.user_id][alice.device_id]["signatures"][alice.user_id]
        assert f"ed25519:{public(self_signing)}" in sigs and f"ed25519:{alice.device_id}" in sigs
        assert body["master_keys"][alice.user_id]["keys"] == {f"ed25519:{public(master2)}": public(master2)}
        assert alice.user_id in body["self_signing_keys"] and body["user_signing_keys"] == {}
        status, body = await raw(server, "POST", f"{V3}/keys/query", token=alice.access_token,
                                 json={"device_keys": {alice.user_id: []}})
        assert alice.user_id in body["user_signing_keys"]

        # A bad signature, an unknown key: failures, nothing stored.
        forged = sign(dict(mine), alice.user_id, f"ed25519:{public(self_signing)}", SigningKey.generate())
        status, body = await raw(server, "POST", f"{V3}/keys/signatures/upload", token=alice.access_token,
                                 json={alice.user_id: {alice.device_id: forged, "NOSUCH": signed}})
        assert status == 200
        assert body["failures"][alice.user_id][alice.device_id]["errcode"] == "M_INVALID_SIGNATURE"
        assert body["failures"][alice.user_id]["NOSUCH"]["errcode"] == "M_NOT_FOUND"

        # Bob cross-signs Alice's master key with his user-signing key: he sees it.
        b_master, b_user_signing = SigningKey.generate(), SigningKey.generate()
        status, _ = await raw(server, "POST", f"{V3}/keys/device_signing/upload", token=bob.access_token, json={
            "master_key": cross_signing_key(bob.user_id, "master", b_master, None),
            "user_signing_key": cross_signing_key(bob.user_id, "user_signing", b_user_signing, b_master)})
        assert status == 200
        status, body = await raw(server, "POST", f"{V3}/keys/query", token=bob.access_token,
                                 json={"device_keys": {alice.user_id: []}})
        alice_master = body["master_keys"][alice.user_id]
        signed_master = sign(dict(alice_master), bob.user_id, f"ed25519:{public(b_user_signing)}", b_user_signing)
        status, body = await raw(server, "POST", f"{V3}/keys/signatures/upload", token=bob.access_token,
                                 json={alice.user_id: {public(master2): signed_master}})
        assert status == 200 and body["failures"] == {}, body
        status, body = await raw(server, "POST", f"{V3}/keys/query", token=bob.access_token,
                                 json={"device_keys": {alice.user_id: []}})
        assert f"ed25519:{public(b_user_signing)}" in body["master_keys"][alice.user_id]["signatures"][bob.user_id]
