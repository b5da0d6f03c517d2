"""Room upgrades across two servers, on SQLite and PostgreSQL: the upgrader needs the power
to tombstone; the new room names its predecessor, carries the copied state, the users'
power levels and the alias; the old room is tombstoned and restricted; the other server's
user follows the tombstone's replacement_room and both end up in the new room (v10 -> v11,
then v11 -> v12, where creators leave the power levels' users)."""

from __future__ import annotations

from typing import Any

from nio import JoinResponse

from homeserver.server import RunningServer
from tests.clients import eventually, nio_user, raw, server_name, sync_until

V3 = "/_matrix/client/v3"


async def state(server: RunningServer, token: str, room: str, event_type: str) -> dict[str, Any]:
    status, content = await raw(server, "GET", f"{V3}/rooms/{room}/state/{event_type}", token=token)
    assert status == 200, content
    return dict(content)


async def test_upgrade_moves_both_users_to_the_new_room(pair: tuple[RunningServer, RunningServer]) -> None:
    a, b = pair
    async with nio_user(a, "alice") as alice, nio_user(b, "bob") as bob:
        status, created = await raw(a, "POST", f"{V3}/createRoom", token=alice.access_token, json={
            "room_version": "10", "name": "Old", "topic": "upgrades", "room_alias_name": "up",
            "invite": [bob.user_id], "preset": "private_chat"})
        assert status == 200, created
        room = created["room_id"]
        await sync_until(bob, lambda r: room in r.rooms.invite)
        assert isinstance(await bob.join(room), JoinResponse)
        pl = await state(a, alice.access_token, room, "m.room.power_levels")
        pl["users"][bob.user_id] = 50
        status, _ = await raw(a, "PUT", f"{V3}/rooms/{room}/state/m.room.power_levels", token=alice.access_token,
                              json=pl)
        assert status == 200

        async def b_sees_power() -> bool:
            status, got = await raw(b, "GET", f"{V3}/rooms/{room}/state/m.room.power_levels", token=bob.access_token)
            return status == 200 and got["users"].get(bob.user_id) == 50
        await eventually(b_sees_power)

        # A ban, carried over to each new room.
        async with nio_user(a, "carol") as carol:
            status, _ = await raw(a, "POST", f"{V3}/rooms/{room}/ban", token=alice.access_token,
                                  json={"user_id": carol.user_id, "reason": "spam"})
            assert status == 200
            banned = carol.user_id

        # Refusals: Bob lacks the power to tombstone; an unknown version; a stranger.
        status, body = await raw(b, "POST", f"{V3}/rooms/{room}/upgrade", token=bob.access_token,
                                 json={"new_version": "11"})
        assert (status, body["errcode"]) == (403, "M_FORBIDDEN"), body
        status, body = await raw(a, "POST", f"{V3}/rooms/{room}/upgrade", token=alice.access_token,
                                 json={"new_version": "999"})
        assert (status, body["errcode"]) == (400, "M_UNSUPPORTED_ROOM_VERSION"), body

        current = room
        for version in ("11", "12"):
            status, body = await raw(a, "POST", f"{V3}/rooms/{current}/upgrade", token=alice.access_token,
                                     json={"new_version": version})
            assert status == 200, body
            new = body["replacement_room"]
            # The old room: tombstoned, restricted, canonical alias gone.
            tombstone = await state(a, alice.access_token, current, "m.room.tombstone")
            assert tombstone["replacement_room"] == new
            old_pl = await state(a, alice.access_token, current, "m.room.power_levels")
            assert old_pl["events_default"] == 50 and old_pl["invite"] == 50
            status, body = await raw(a, "POST", f"{V3}/rooms/{current}/upgrade", token=alice.access_token,
                                     json={"new_version": version})
            assert (status, body["errcode"]) == (400, "M_BAD_STATE"), body
            # The new room: predecessor, copied state, levels kept, the alias moved.
            create = await state(a, alice.access_token, new, "m.room.create")
            assert create["predecessor"]["room_id"] == current and create["room_version"] == version
            assert (await state(a, alice.access_token, new, "m.room.name"))["name"] == "Old"
            assert (await state(a, alice.access_token, new, "m.room.topic"))["topic"] == "upgrades"
            assert (await state(a, alice.access_token, new, "m.room.join_rules"))["join_rule"] == "invite"
            new_pl = await state(a, alice.access_token, new, "m.room.power_levels")
            assert new_pl["users"][bob.user_id] == 50
            assert (alice.user_id in new_pl["users"]) == (version != "12")  # v12: creators are not listed
            member = await state(a, alice.access_token, new, f"m.room.member/{banned}")
            assert member["membership"] == "ban" and member["reason"] == "spam"
            alias = f"#up:{server_name(a)}"
            assert (await state(a, alice.access_token, new, "m.room.canonical_alias"))["alias"] == alias
            status, resolved = await raw(a, "GET", f"{V3}/directory/room/%23up:{server_name(a)}")
            assert status == 200 and resolved["room_id"] == new

            # Bob (B) follows the tombstone: he was invited, and joins the replacement room.
            async def b_sees_tombstone(old: str = current, new: str = new) -> bool:
                status, got = await raw(b, "GET", f"{V3}/rooms/{old}/state/m.room.tombstone", token=bob.access_token)
                return status == 200 and got.get("replacement_room") == new
            await eventually(b_sees_tombstone)
            await sync_until(bob, lambda r, new=new: new in r.rooms.invite)
            assert isinstance(await bob.join(new), JoinResponse)

            async def both_in_new(new: str = new) -> bool:
                status, got = await raw(a, "GET", f"{V3}/rooms/{new}/joined_members", token=alice.access_token)
                return status == 200 and set(got["joined"]) == {alice.user_id, bob.user_id}
            await eventually(both_in_new)
            current = new
