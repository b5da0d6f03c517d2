"""Upgrading a room whose power levels hold strings (rooms 1-9 read ``"50"`` as 50) to a
version that takes integers only: the copied power levels were refused by the new room's
auth rules (403 ``ban is not an integer`` to a user who had every power needed), and the
tombstone level needed was read as the default 50 instead of the room's ``"100"``."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from homeserver.events.versions import get_room_version
from homeserver.rooms.upgrade import integer_levels
from tests.clients import client_server, raw
from tests.conftest import DatabaseFactory

C = "/_matrix/client/v3"


def test_integer_levels() -> None:
    v6, v10 = get_room_version("6"), get_room_version("10")
    pl = {"ban": " +50 ", "kick": "x", "redact": True, "users": {"@a:x": "100", "@b:x": 1.5, "@c:x": 2**60},
          "events": {"m.room.name": "-5"}, "notifications": {"room": "20"}, "historical": "100"}
    assert integer_levels(pl, v6) == {"ban": 50, "users": {"@a:x": 100}, "events": {"m.room.name": -5},
                                      "notifications": {"room": 20}, "historical": "100"}
    assert integer_levels(pl, v10) == {"users": {}, "events": {}, "notifications": {}, "historical": "100"}


async def test_upgrade_of_a_room_with_string_levels(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    async with client_server(db_factory, tmp_path / "s", test_ca) as server:
        tokens = {}
        for name in ("alice", "bob"):
            status, body = await raw(server, "POST", C + "/register", json={
                "username": name, "password": "correct horse battery", "auth": {"type": "m.login.dummy"}})
            assert status == 200, body
            tokens[name] = (body["user_id"], body["access_token"])
        (alice, alice_token), (bob, bob_token) = tokens["alice"], tokens["bob"]
        status, body = await raw(server, "POST", C + "/createRoom", token=alice_token,
                                 json={"room_version": "6", "preset": "private_chat", "invite": [bob]})
        assert status == 200, body
        room = quote(body["room_id"])
        status, body = await raw(server, "POST", f"{C}/rooms/{room}/join", token=bob_token, json={})
        assert status == 200, body
        status, body = await raw(server, "PUT", f"{C}/rooms/{room}/state/m.room.power_levels/", token=alice_token,
                                 json={"users": {alice: "100", bob: "60"}, "ban": "50", "state_default": "50",
                                       "events": {"m.room.tombstone": "100", "m.room.name": "50"}})
        assert status == 200, body
        # Bob (60) may not upgrade: the tombstone needs "100"; no new room is made.
        status, body = await raw(server, "POST", f"{C}/rooms/{room}/upgrade", token=bob_token,
                                 json={"new_version": "11"})
        assert (status, body["errcode"]) == (403, "M_FORBIDDEN"), body
        status, body = await raw(server, "GET", C + "/joined_rooms", token=bob_token)
        assert status == 200 and len(body["joined_rooms"]) == 1, body
        status, body = await raw(server, "POST", f"{C}/rooms/{room}/upgrade", token=alice_token,
                                 json={"new_version": "11"})
        assert status == 200, body
        new_room = quote(body["replacement_room"])
        status, levels = await raw(server, "GET", f"{C}/rooms/{new_room}/state/m.room.power_levels/",
                                   token=alice_token)
        assert status == 200, levels
        assert levels["users"] == {alice: 100, bob: 60}
        assert (levels["ban"], levels["events"]["m.room.tombstone"]) == (50, 100)
