"""Devices and the account through the client API (both engines, a real server, matrix-nio
and raw HTTP): list, read and rename devices; delete them behind user-interactive auth with
the account's password, after which the device's access token no longer works; another
user's devices are out of reach; the password changed; the account deactivated; bad input
gets its Matrix error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nio import (
    DeleteDevicesResponse,
    DevicesResponse,
    JoinResponse,
    RoomCreateResponse,
    UpdateDeviceResponse,
)

from tests.clients import client_server, nio_user, raw
from tests.conftest import DatabaseFactory

V3 = "/_matrix/client/v3"
PASSWORD = "correct horse battery"  # nio_user's


async def test_devices(db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]) -> None:
    async with client_server(db_factory, tmp_path / "a", test_ca) as server, \
            nio_user(server, "alice") as alice, nio_user(server, "bob") as bob:
        # A second session of Alice's: her phone.
        status, phone = await raw(server, "POST", f"{V3}/login", json={
            "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"},
            "password": PASSWORD, "initial_device_display_name": "phone"})
        assert status == 200, phone

        listed = await alice.devices()
        assert isinstance(listed, DevicesResponse), listed
        assert {d.id: d.display_name for d in listed.devices} == {alice.device_id: None, phone["device_id"]: "phone"}
        status, one = await raw(server, "GET", f"{V3}/devices/{phone['device_id']}", token=alice.access_token)
        assert status == 200 and one == {"device_id": phone["device_id"], "display_name": "phone",
                                         "last_seen_ip": None, "last_seen_ts": None}
        # Bob's device is not Alice's to see.
        status, body = await raw(server, "GET", f"{V3}/devices/{bob.device_id}", token=alice.access_token)
        assert status == 404 and body["errcode"] == "M_NOT_FOUND"

        # Rename.
        renamed = await alice.update_device(phone["device_id"], {"display_name": "old phone"})
        assert isinstance(renamed, UpdateDeviceResponse), renamed
        status, one = await raw(server, "GET", f"{V3}/devices/{phone['device_id']}", token=alice.access_token)
        assert one["display_name"] == "old phone"
        for device_id, payload, expected in (
            ("NOSUCH", {"display_name": "x"}, (404, "M_NOT_FOUND")),
            (bob.device_id, {"display_name": "mine now"}, (404, "M_NOT_FOUND")),
            (phone["device_id"], {"display_name": 5}, (400, "M_BAD_JSON")),
            (phone["device_id"], {"display_name": "x" * 101}, (400, "M_INVALID_PARAM")),
        ):
            status, body = await raw(server, "PUT", f"{V3}/devices/{device_id}", token=alice.access_token,
                                     json=payload)
            assert (status, body["errcode"]) == expected, body
        status, body = await raw(server, "PUT", f"{V3}/devices/{phone['device_id']}", token=alice.access_token,
                                 data=b"not json")
        assert status == 400 and body["errcode"] == "M_NOT_JSON"

        # Delete the phone: first the auth flow, then a wrong password, then the right one.
        path = f"{V3}/devices/{phone['device_id']}"
        status, flow = await raw(server, "DELETE", path, token=alice.access_token)
        assert status == 401 and flow["flows"] == [{"stages": ["m.login.password"]}] and "errcode" not in flow
        session = flow["session"]
        auth = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": alice.user_id},
                "session": session}
        status, body = await raw(server, "DELETE", path, token=alice.access_token,
                                 json={"auth": {**auth, "password": "wrong"}})
        assert status == 401 and body["errcode"] == "M_FORBIDDEN" and body["session"] == session
        status, whoami = await raw(server, "GET", f"{V3}/account/whoami", token=phone["access_token"])
        assert status == 200 and whoami["device_id"] == phone["device_id"]
        status, body = await raw(server, "DELETE", path, token=alice.access_token,
                                 json={"auth": {**auth, "password": PASSWORD}})
        assert status == 200, body
        status, body = await raw(server, "GET", f"{V3}/account/whoami", token=phone["access_token"])
        assert status == 401 and body["errcode"] == "M_UNKNOWN_TOKEN"
        listed = await alice.devices()
        assert isinstance(listed, DevicesResponse) and [d.id for d in listed.devices] == [alice.device_id]

        # Another user's password does not authorize Alice's request, nor reach Bob's devices.
        status, body = await raw(server, "POST", f"{V3}/delete_devices", token=alice.access_token, json={
            "devices": [bob.device_id],
            "auth": {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": bob.user_id},
                     "password": PASSWORD}})
        assert status == 401 and body["errcode"] == "M_FORBIDDEN"
        status, body = await raw(server, "POST", f"{V3}/delete_devices", token=alice.access_token,
                                 json={"devices": "all"})
        assert status == 400 and body["errcode"] == "M_BAD_JSON"

        # delete_devices through nio (its own auth dict): Alice deletes her last device.
        deleted = await alice.delete_devices([alice.device_id, bob.device_id], auth={
            "type": "m.login.password", "user": alice.user_id, "password": PASSWORD})
        assert isinstance(deleted, DeleteDevicesResponse), deleted
        status, _ = await raw(server, "GET", f"{V3}/account/whoami", token=alice.access_token)
        assert status == 401
        status, whoami = await raw(server, "GET", f"{V3}/account/whoami", token=bob.access_token)
        assert status == 200 and whoami["user_id"] == bob.user_id


async def test_password_change(db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]) -> None:
    async with client_server(db_factory, tmp_path / "a", test_ca) as server, nio_user(server, "alice") as alice:
        async def login(password: str, device: str | None = None) -> tuple[int, Any]:
            body: dict[str, Any] = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"},
                                    "password": password}
            if device is not None:
                body["device_id"] = device
            return await raw(server, "POST", f"{V3}/login", json=body)

        status, laptop = await login(PASSWORD, "LAPTOP")
        assert status == 200, laptop
        path = f"{V3}/account/password"
        # Bad input first: nothing changes.
        for payload, expected in (({}, (400, "M_BAD_JSON")), ({"new_password": 5}, (400, "M_BAD_JSON")),
                                  ({"new_password": "x", "logout_devices": "yes"}, (400, "M_BAD_JSON"))):
            status, body = await raw(server, "POST", path, token=alice.access_token, json=payload)
            assert (status, body["errcode"]) == expected, body
        # The auth flow, a wrong current password, then the right one.
        status, flow = await raw(server, "POST", path, token=alice.access_token,
                                 json={"new_password": "new-password-1"})
        assert status == 401 and flow["flows"] == [{"stages": ["m.login.password"]}]
        auth = {"type": "m.login.password", "user": "alice", "session": flow["session"]}
        status, body = await raw(server, "POST", path, token=alice.access_token,
                                 json={"new_password": "new-password-1", "auth": {**auth, "password": "wrong"}})
        assert status == 401 and body["errcode"] == "M_FORBIDDEN"
        assert (await login(PASSWORD))[0] == 200
        status, body = await raw(server, "POST", path, token=alice.access_token,
                                 json={"new_password": "new-password-1", "auth": {**auth, "password": PASSWORD}})
        assert status == 200, body
        # The old password no longer logs in, the new one does; other devices were logged out.
        status, body = await login(PASSWORD)
        assert status == 403 and body["errcode"] == "M_FORBIDDEN"
        status, _ = await raw(server, "GET", f"{V3}/account/whoami", token=laptop["access_token"])
        assert status == 401
        status, whoami = await raw(server, "GET", f"{V3}/account/whoami", token=alice.access_token)
        assert status == 200 and whoami["device_id"] == alice.device_id
        status, phone = await login("new-password-1", "PHONE")
        assert status == 200
        # logout_devices false keeps them.
        status, body = await raw(server, "POST", path, token=alice.access_token, json={
            "new_password": "new-password-2", "logout_devices": False,
            "auth": {"type": "m.login.password", "user": alice.user_id, "password": "new-password-1"}})
        assert status == 200, body
        status, _ = await raw(server, "GET", f"{V3}/account/whoami", token=phone["access_token"])
        assert status == 200
        assert (await login("new-password-2"))[0] == 200


async def test_account_deactivation(db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]) -> None:
    async with client_server(db_factory, tmp_path / "a", test_ca) as server, \
            nio_user(server, "alice") as alice, nio_user(server, "bob") as bob:
        shared = await bob.room_create(name="Shared", invite=[alice.user_id])
        assert isinstance(shared, RoomCreateResponse), shared
        assert isinstance(await alice.join(shared.room_id), JoinResponse)
        pending = await bob.room_create(name="Pending", invite=[alice.user_id])
        assert isinstance(pending, RoomCreateResponse), pending
        status, _ = await raw(server, "PUT", f"{V3}/profile/{alice.user_id}/displayname",
                              token=alice.access_token, json={"displayname": "Alice"})
        assert status == 200

        path = f"{V3}/account/deactivate"
        status, flow = await raw(server, "POST", path, token=alice.access_token, json={})
        assert status == 401 and flow["flows"] == [{"stages": ["m.login.password"]}]
        status, body = await raw(server, "POST", path, token=alice.access_token, json={"erase": "yes"})
        assert status == 400 and body["errcode"] == "M_BAD_JSON"
        status, body = await raw(server, "POST", path, token=alice.access_token, json={
            "auth": {"type": "m.login.password", "user": "alice", "password": PASSWORD, "session": flow["session"]}})
        assert (status, body) == (200, {"id_server_unbind_result": "no-support"})

        # Her token is gone, she cannot log in, her name is taken for good, her profile is empty.
        status, body = await raw(server, "GET", f"{V3}/account/whoami", token=alice.access_token)
        assert status == 401 and body["errcode"] == "M_UNKNOWN_TOKEN"
        status, body = await raw(server, "POST", f"{V3}/login", json={
            "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": PASSWORD})
        assert status == 403 and body["errcode"] == "M_FORBIDDEN"
        status, body = await raw(server, "GET", f"{V3}/register/available?username=alice")
        assert status == 400 and body["errcode"] == "M_USER_IN_USE"
        status, profile = await raw(server, "GET", f"{V3}/profile/{alice.user_id}", token=bob.access_token)
        assert "displayname" not in profile or profile["displayname"] is None, profile
        # She left the room she was in and rejected the invite she held.
        for room in (shared.room_id, pending.room_id):
            status, member = await raw(server, "GET", f"{V3}/rooms/{room}/state/m.room.member/{alice.user_id}",
                                       token=bob.access_token)
            assert status == 200 and member["membership"] == "leave", (room, member)
