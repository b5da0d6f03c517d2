"""Identity across two servers (issue 22): member events carry the user's display name
and avatar, a profile change is carried into the user's rooms (in the background), and
an invite's stripped state shows the room's name and the inviter's member event."""

from __future__ import annotations

from typing import Any

from homeserver.server import RunningServer
from tests.clients import eventually, nio_user, raw

V3 = "/_matrix/client/v3"


async def _member(server: RunningServer, token: str, room: str, user: str) -> dict[str, Any] | None:
    status, body = await raw(server, "GET", f"{V3}/rooms/{room}/state/m.room.member/{user}", token=token)
    return body if status == 200 else None


async def _sync(server: RunningServer, token: str) -> dict[str, Any]:
    status, body = await raw(server, "GET", f"{V3}/sync", token=token)
    assert status == 200, body
    assert isinstance(body, dict)
    return body


async def test_names_in_member_events_invites_and_profile_changes(
    pair: tuple[RunningServer, RunningServer],
) -> None:
    a, b = pair
    async with nio_user(a, "alice") as alice, nio_user(b, "bob") as bob:
        assert (await raw(a, "PUT", f"{V3}/profile/{alice.user_id}/avatar_url", token=alice.access_token,
                          json={"avatar_url": "mxc://a/pic"}))[0] == 200
        status, body = await raw(a, "POST", f"{V3}/createRoom", token=alice.access_token,
                                 json={"name": "Names", "invite": [bob.user_id]})
        assert status == 200, body
        room = body["room_id"]
        # Alice's join carries her profile.
        assert await _member(a, alice.access_token, room, alice.user_id) == {
            "membership": "join", "displayname": "alice", "avatar_url": "mxc://a/pic"}

        # Bob's invite shows the room's name and Alice's member event (with her name).
        async def invited() -> bool:
            rooms = (await _sync(b, bob.access_token))["rooms"]["invite"]
            if room not in rooms:
                return False
            events = rooms[room]["invite_state"]["events"]
            kinds = {(e["type"], e.get("state_key")): e for e in events}
            assert kinds[("m.room.name", "")]["content"]["name"] == "Names"
            assert ("m.room.create", "") in kinds and ("m.room.join_rules", "") in kinds
            inviter = kinds[("m.room.member", alice.user_id)]
            assert inviter["content"]["displayname"] == "alice"
            assert inviter["sender"] == alice.user_id
            assert kinds[("m.room.member", bob.user_id)]["content"]["membership"] == "invite"
            return True
        await eventually(invited)

        # Bob joins over federation: his join carries his name, on both servers.
        assert (await raw(b, "POST", f"{V3}/join/{room}", token=bob.access_token, json={}))[0] == 200
        for server, token in ((a, alice.access_token), (b, bob.access_token)):
            async def bob_named(server: RunningServer = server, token: str = token) -> bool:
                m = await _member(server, token, room, bob.user_id)
                return m is not None and m.get("membership") == "join" and m.get("displayname") == "bob"
            await eventually(bob_named)

        # Bob sees Alice's name in the room's state.
        status, state = await raw(b, "GET", f"{V3}/rooms/{room}/state", token=bob.access_token)
        assert status == 200
        alice_member = next(e for e in state if e["type"] == "m.room.member" and e["state_key"] == alice.user_id)
        assert alice_member["content"]["displayname"] == "alice"

        # Alice renames: the PUT returns, and her member event follows on Bob's server.
        assert (await raw(a, "PUT", f"{V3}/profile/{alice.user_id}/displayname", token=alice.access_token,
                          json={"displayname": "Alice Liddell"}))[0] == 200

        async def renamed() -> bool:
            m = await _member(b, bob.access_token, room, alice.user_id)
            return m is not None and m.get("displayname") == "Alice Liddell" and m.get("avatar_url") == "mxc://a/pic"
        await eventually(renamed)
        status, members = await raw(b, "GET", f"{V3}/rooms/{room}/joined_members", token=bob.access_token)
        assert members["joined"][alice.user_id]["display_name"] == "Alice Liddell"

        # Unsetting the avatar drops the key from her member event.
        assert (await raw(a, "PUT", f"{V3}/profile/{alice.user_id}/avatar_url", token=alice.access_token,
                          json={"avatar_url": None}))[0] == 200

        async def no_avatar() -> bool:
            m = await _member(b, bob.access_token, room, alice.user_id)
            return m is not None and "avatar_url" not in m and m.get("displayname") == "Alice Liddell"
        await eventually(no_avatar)


async def test_hierarchy_of_a_remote_space(pair: tuple[RunningServer, RunningServer]) -> None:
    """A space held only by the other server: its hierarchy comes over federation."""
    from tests.clients import server_name
    from tests.integration.test_spaces import add_child, create, hierarchy_path
    a, b = pair
    async with nio_user(a, "alice") as alice, nio_user(b, "bob") as bob:
        space = await create(b, bob.access_token, name="B space", preset="public_chat",
                             creation_content={"type": "m.space"})
        child = await create(b, bob.access_token, name="B child", preset="public_chat")
        await add_child(b, bob.access_token, space, child, [server_name(b)])
        assert not await a.services.rooms.participating(space)
        # Asked with a via hint, then (without) once Alice is invited (Element's invite preview).
        status, reply = await raw(a, "GET", hierarchy_path(space, via=server_name(b)), token=alice.access_token)
        assert status == 200, reply
        assert [(r["room_id"], r.get("name")) for r in reply["rooms"]] == [(space, "B space"), (child, "B child")]
        hidden = await create(b, bob.access_token, name="B hidden", creation_content={"type": "m.space"})
        status, reply = await raw(a, "GET", hierarchy_path(hidden, via=server_name(b)), token=alice.access_token)
        assert (status, reply["errcode"]) == (403, "M_FORBIDDEN")
        private = await create(b, bob.access_token, name="B private", creation_content={"type": "m.space"})
        assert (await raw(b, "POST", f"{V3}/rooms/{private}/invite", token=bob.access_token,
                          json={"user_id": alice.user_id}))[0] == 200

        async def previewed() -> bool:
            status, reply = await raw(a, "GET", hierarchy_path(private), token=alice.access_token)
            return status == 200 and [r["room_id"] for r in reply["rooms"]] == [private]
        await eventually(previewed)
        # And of a local space, for a local user.
        local = await create(a, alice.access_token, name="A space", preset="public_chat",
                             creation_content={"type": "m.space"})
        status, reply = await raw(a, "GET", hierarchy_path(local), token=alice.access_token)
        assert status == 200 and [r["room_id"] for r in reply["rooms"]] == [local]
