"""End-to-end keys across two servers (both engines, real HTTP/TLS and X-Matrix): Alice on
A queries and claims Bob's keys on B; a server that cannot be reached is named in
``failures``; Bob's device-list changes reach A as m.device_list_update EDUs (the first
names a ``prev_id`` A never saw: A resyncs the whole list through GET /user/devices; the
next applies in sequence), and his cross-signing keys as m.signing_key_update; Alice's
/sync lists Bob under device_lists.changed; the federation endpoints refuse bad input and
other servers' users."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey
from nio import JoinResponse, RoomCreateResponse

from homeserver.errors import FederationRequestError
from homeserver.server import RunningServer
from homeserver.storage.device_lists import DeviceListStore
from homeserver.storage.e2e_keys import E2eKeysStore
from tests.clients import eventually, nio_user, raw, server_name, sync_until
from tests.conftest import DatabaseFactory
from tests.e2e_keys_helpers import PASSWORD, V3, cross_signing_key, device_keys, one_time_keys, password_auth
from tests.remote import fake_remote
from tests.servers import make_config, running_server

FED = "/_matrix/federation/v1"


async def _sync(server: RunningServer, token: str, since: str | None = None) -> dict[str, Any]:
    status, body = await raw(server, "GET", f"{V3}/sync?timeout=0" + (f"&since={since}" if since else ""),
                             token=token)
    assert status == 200, body
    return body


async def test_remote_query_claim_and_device_list_updates(pair: tuple[RunningServer, RunningServer]) -> None:
    a, b = pair
    async with nio_user(a, "alice") as alice, nio_user(b, "bob") as bob:
        # Bob uploads keys before sharing a room with anyone: B tells no server.
        b_sk = SigningKey.generate()
        status, _ = await raw(b, "POST", f"{V3}/keys/upload", token=bob.access_token, json={
            "device_keys": device_keys(bob.user_id, bob.device_id, b_sk),
            "one_time_keys": one_time_keys(bob.user_id, bob.device_id, b_sk, 2)})
        assert status == 200
        created = await alice.room_create(name="Keys", invite=[bob.user_id])
        assert isinstance(created, RoomCreateResponse), created
        room = created.room_id
        await sync_until(bob, lambda r: room in r.rooms.invite)
        assert isinstance(await bob.join(room), JoinResponse)

        async def both_joined() -> bool:
            s, body = await raw(a, "GET", f"{V3}/rooms/{room}/joined_members", token=alice.access_token)
            return s == 200 and bob.user_id in body["joined"]
        await eventually(both_joined)

        # Alice queries and claims Bob's keys through A; an unreachable server is a failure.
        unreachable = "@x:127.0.0.1:9"
        status, body = await raw(a, "POST", f"{V3}/keys/query", token=alice.access_token,
                                 json={"device_keys": {bob.user_id: [], unreachable: []}, "timeout": 5000})
        assert status == 200, body
        assert body["device_keys"][bob.user_id][bob.device_id]["keys"][f"ed25519:{bob.device_id}"]
        assert set(body["failures"]) == {"127.0.0.1:9"}
        status, body = await raw(a, "POST", f"{V3}/keys/claim", token=alice.access_token, json={
            "one_time_keys": {bob.user_id: {bob.device_id: "signed_curve25519"}, unreachable: {"D": "x"}}})
        assert status == 200, body
        (key_id,) = body["one_time_keys"][bob.user_id][bob.device_id]
        assert key_id.startswith("signed_curve25519:K") and set(body["failures"]) == {"127.0.0.1:9"}
        status, counts = await raw(b, "POST", f"{V3}/keys/upload", token=bob.access_token, json={})
        assert counts["one_time_key_counts"] == {"signed_curve25519": 1}

        # Bob's second device uploads keys: the EDU names a prev_id A never saw, so A resyncs
        # Bob's whole list (both devices); Alice's /sync lists Bob as changed.
        since = (await _sync(a, alice.access_token))["next_batch"]
        status, phone = await raw(b, "POST", f"{V3}/login", json={
            "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "bob"},
            "password": PASSWORD, "initial_device_display_name": "phone"})
        assert status == 200
        status, _ = await raw(b, "POST", f"{V3}/keys/upload", token=phone["access_token"], json={
            "device_keys": device_keys(bob.user_id, phone["device_id"], SigningKey.generate())})
        assert status == 200
        lists = DeviceListStore(a.services.db)

        async def resynced() -> bool:
            return {d.device_id for d in await lists.remote_devices(bob.user_id)} == {bob.device_id, phone["device_id"]}
        await eventually(resynced)
        synced = await _sync(a, alice.access_token, since)
        assert bob.user_id in synced["device_lists"]["changed"]
        cached = await lists.remote_list(bob.user_id)
        assert cached is not None and not cached.stale

        # Deleting the phone: the next EDU follows in sequence and is applied as it is.
        path = f"{V3}/devices/{phone['device_id']}"
        status, flow = await raw(b, "DELETE", path, token=bob.access_token)
        status, _ = await raw(b, "DELETE", path, token=bob.access_token,
                              json={"auth": password_auth(bob.user_id, flow["session"])})
        assert status == 200

        async def applied() -> bool:
            return {d.device_id for d in await lists.remote_devices(bob.user_id)} == {bob.device_id}
        await eventually(applied)
        after = await lists.remote_list(bob.user_id)
        assert after is not None and after.stream_id > cached.stream_id and not after.stale

        # Bob's cross-signing keys reach A as m.signing_key_update.
        master, self_signing = SigningKey.generate(), SigningKey.generate()
        status, _ = await raw(b, "POST", f"{V3}/keys/device_signing/upload", token=bob.access_token, json={
            "master_key": cross_signing_key(bob.user_id, "master", master, None),
            "self_signing_key": cross_signing_key(bob.user_id, "self_signing", self_signing, master)})
        assert status == 200
        store = E2eKeysStore(a.services.db)

        async def learnt() -> bool:
            return set(await store.cross_signing_keys(bob.user_id)) == {"master", "self_signing"}
        await eventually(learnt)
        status, body = await raw(a, "POST", f"{V3}/keys/query", token=alice.access_token,
                                 json={"device_keys": {bob.user_id: []}})
        assert bob.user_id in body["master_keys"] and bob.user_id in body["self_signing_keys"]
        assert "user_signing_keys" not in body or bob.user_id not in body["user_signing_keys"]


async def test_federation_endpoints_refuse_bad_input(pair: tuple[RunningServer, RunningServer]) -> None:
    a, b = pair
    async with nio_user(a, "alice") as alice:
        client = b.services.federation_client
        dest = server_name(a)
        reply = await client.get_json(dest, f"{FED}/user/devices/{alice.user_id}")
        assert reply["user_id"] == alice.user_id and reply["devices"][0]["device_id"] == alice.device_id
        for path, body, status in (
            ("/user/keys/query", {"device_keys": []}, 400),
            ("/user/keys/query", {"device_keys": {"nope": []}}, 400),
            ("/user/keys/claim", {"one_time_keys": {alice.user_id: {"D": 7}}}, 400),
            ("/user/keys/claim", {}, 400),
        ):
            with pytest.raises(FederationRequestError) as caught:
                await client.post_json(dest, FED + path, body)
            assert caught.value.status == status, (path, caught.value)
        for user in (f"@someone:{server_name(b)}", f"@nobody:{dest}"):
            with pytest.raises(FederationRequestError) as caught:
                await client.get_json(dest, f"{FED}/user/devices/{user}")
            assert caught.value.status in (403, 404)
        # Only our users are answered.
        reply = await client.post_json(dest, f"{FED}/user/keys/query",
                                       {"device_keys": {f"@x:{server_name(b)}": [], alice.user_id: []}})
        assert set(reply["device_keys"]) == {alice.user_id}


async def test_device_list_edus_only_about_the_origins_users_in_shared_rooms(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    """A (fake) server's device-list EDUs: about another server's user, refused at the door;
    about its own user who shares no room with ours, dropped; both counted; nothing stored."""
    config = make_config(tmp_path / "hs", await db_factory.new_settings(), test_ca)
    async with running_server(config) as server, fake_remote(test_ca, tmp_path / "remote") as remote:
        own, other = f"@eve:{remote.server_name}", "@mallory:elsewhere.test"
        edus = [
            {"edu_type": "m.device_list_update", "content": {"user_id": own, "device_id": "D", "stream_id": 1,
                                                             "prev_id": [], "deleted": False}},
            {"edu_type": "m.device_list_update", "content": {"user_id": other, "device_id": "D", "stream_id": 1,
                                                             "prev_id": []}},
            {"edu_type": "m.signing_key_update", "content": {"user_id": other, "master_key": {}}},
            {"edu_type": "m.signing_key_update", "content": {"user_id": own, "master_key": {"user_id": own}}},
        ]
        status, _ = await remote.send(server, [], edus)
        assert status == 200
        assert await server.services.inbound_worker.wait_idle(30.0)

        def dropped(reason: str) -> float:
            return server.services.metrics.registry.get_sample_value(
                "hs_inbound_edus_dropped_total", {"origin": remote.server_name, "reason": reason}) or 0.0
        assert dropped("foreign_user") == 2 and dropped("not_in_room") == 2
        assert await DeviceListStore(server.services.db).remote_list(own) is None
        assert await E2eKeysStore(server.services.db).cross_signing_keys(own) == {}
