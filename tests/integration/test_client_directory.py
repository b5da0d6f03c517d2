"""Room aliases and the published room directory, driven by matrix-nio on real servers on
loopback (both database engines): createRoom with room_alias_name and its canonical alias
event, alias create/resolve/delete with the spec's errors, visibility, /publicRooms with
pagination and search; and over federation, a user of one server resolving and joining
another server's alias and talking in the room, and each server reading the other's room
directory."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from nio import (
    JoinResponse,
    RoomCreateResponse,
    RoomDeleteAliasResponse,
    RoomGetStateEventResponse,
    RoomGetVisibilityResponse,
    RoomPutAliasResponse,
    RoomResolveAliasError,
    RoomResolveAliasResponse,
    RoomSendResponse,
    RoomVisibility,
)
from nio.responses import PublicRoomsResponse

from homeserver.server import RunningServer
from tests.clients import client_server, eventually, msg, nio_user, raw, sync_until, timeline_bodies
from tests.clients import server_name as name_of
from tests.conftest import DatabaseFactory

V3 = "/_matrix/client/v3"
TEXT = "m.room.message"


def alias_path(alias: str) -> str:
    return f"{V3}/directory/room/{quote(alias, safe='')}"


async def event_types(server: RunningServer, room_id: str) -> list[str]:
    rows = await server.services.db.fetchall(
        "SELECT type FROM events WHERE room_id = ? ORDER BY stream_ordering", room_id
    )
    return [r[0] for r in rows]


async def test_aliases_and_directory_on_one_server(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    async with client_server(db_factory, tmp_path / "a", test_ca) as server, \
            nio_user(server, "alice") as alice, nio_user(server, "bob") as bob:
        hs = name_of(server)
        lounge = f"#lounge:{hs}"
        created = await alice.room_create(visibility=RoomVisibility.public, alias="lounge", name="Lounge",
                                          topic="Tea and biscuits")
        assert isinstance(created, RoomCreateResponse), created
        room = created.room_id

        # createRoom's order: create, join, power levels, canonical alias, then the preset's.
        types = await event_types(server, room)
        assert types[:5] == ["m.room.create", "m.room.member", "m.room.power_levels",
                             "m.room.canonical_alias", "m.room.join_rules"], types
        state = await alice.room_get_state_event(room, "m.room.canonical_alias")
        assert isinstance(state, RoomGetStateEventResponse) and state.content == {"alias": lounge}, state

        # Resolved without an access token; the servers in the room, ours first.
        resolved = await bob.room_resolve_alias(lounge)
        assert isinstance(resolved, RoomResolveAliasResponse), resolved
        assert (resolved.room_id, resolved.servers) == (room, [hs])
        assert await raw(server, "GET", alias_path(lounge)) == (200, {"room_id": room, "servers": [hs]})

        # The alias is taken: createRoom refuses before making a room.
        before = await raw(server, "GET", f"{V3}/joined_rooms", token=alice.access_token)
        status, body = await raw(server, "POST", f"{V3}/createRoom", token=alice.access_token,
                                 json={"room_alias_name": "lounge"})
        assert (status, body["errcode"]) == (400, "M_ROOM_IN_USE")
        assert await raw(server, "GET", f"{V3}/joined_rooms", token=alice.access_token) == before
        status, body = await raw(server, "POST", f"{V3}/createRoom", token=alice.access_token,
                                 json={"room_alias_name": "a:b"})
        assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")

        # PUT: another alias; the errors of the spec.
        put = await alice.room_put_alias(f"#tea:{hs}", room)
        assert isinstance(put, RoomPutAliasResponse), put
        for alias, room_id, want in [
            (f"#tea:{hs}", room, (409, "M_UNKNOWN")),                   # in use
            ("#tea:elsewhere.test", room, (400, "M_INVALID_PARAM")),    # another server's
            ("tea", room, (400, "M_INVALID_PARAM")),                    # not an alias
            (f"#x:{hs}", "not-a-room", (400, "M_INVALID_PARAM")),
            (f"#x:{hs}", "!nowhere:elsewhere.test", (404, "M_NOT_FOUND")),
            (f"#x:{hs}", room, (403, "M_FORBIDDEN")),                   # Bob is not in the room
        ]:
            who = bob if room_id == room and alias.startswith("#x") else alice
            status, body = await raw(server, "PUT", alias_path(alias), token=who.access_token,
                                     json={"room_id": room_id})
            assert (status, body["errcode"]) == want, (alias, room_id, body)
        status, body = await raw(server, "PUT", alias_path(f"#y:{hs}"), json={"room_id": room})
        assert (status, body["errcode"]) == (401, "M_MISSING_TOKEN")

        # GET errors: unknown alias, malformed alias.
        missing = await bob.room_resolve_alias(f"#nothing:{hs}")
        assert isinstance(missing, RoomResolveAliasError) and missing.status_code == "M_NOT_FOUND", missing
        status, body = await raw(server, "GET", alias_path("#no-server"))
        assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")

        # The room's local aliases: members only.
        status, body = await raw(server, "GET", f"{V3}/rooms/{room}/aliases", token=alice.access_token)
        assert (status, body) == (200, {"aliases": [lounge, f"#tea:{hs}"]})
        status, body = await raw(server, "GET", f"{V3}/rooms/{room}/aliases", token=bob.access_token)
        assert (status, body["errcode"]) == (403, "M_FORBIDDEN")

        # Bob joins by alias; he may add an alias but not delete Alice's (no power).
        joined = await bob.join(lounge)
        assert isinstance(joined, JoinResponse) and joined.room_id == room, joined
        status, body = await raw(server, "GET", f"{V3}/rooms/{room}/aliases", token=bob.access_token)
        assert status == 200 and len(body["aliases"]) == 2
        assert isinstance(await bob.room_put_alias(f"#bobs:{hs}", room), RoomPutAliasResponse)
        status, body = await raw(server, "DELETE", alias_path(f"#tea:{hs}"), token=bob.access_token)
        assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
        # Alice, a moderator of the room, may delete Bob's; Bob may delete his own.
        assert isinstance(await alice.room_delete_alias(f"#bobs:{hs}"), RoomDeleteAliasResponse)
        assert isinstance(await bob.room_put_alias(f"#bobs2:{hs}", room), RoomPutAliasResponse)
        assert isinstance(await bob.room_delete_alias(f"#bobs2:{hs}"), RoomDeleteAliasResponse)
        status, body = await raw(server, "DELETE", alias_path(f"#bobs2:{hs}"), token=bob.access_token)
        assert (status, body["errcode"]) == (404, "M_NOT_FOUND")

        # Deleting the canonical alias takes it out of m.room.canonical_alias.
        assert isinstance(await alice.room_delete_alias(lounge), RoomDeleteAliasResponse)
        state = await alice.room_get_state_event(room, "m.room.canonical_alias")
        assert isinstance(state, RoomGetStateEventResponse) and state.content == {}, state
        assert (await raw(server, "GET", alias_path(lounge)))[0] == 404

        # Visibility: public since createRoom; only a moderator changes it.
        vis = await bob.room_get_visibility(room)
        assert isinstance(vis, RoomGetVisibilityResponse) and vis.visibility == "public", vis
        status, body = await raw(server, "PUT", f"{V3}/directory/list/room/{room}", token=bob.access_token,
                                 json={"visibility": "private"})
        assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
        status, body = await raw(server, "GET", f"{V3}/directory/list/room/!nowhere:{hs}")
        assert (status, body["errcode"]) == (404, "M_NOT_FOUND")

        # The directory: the room with its summary.
        listed = await bob.list_public_rooms()
        assert isinstance(listed, PublicRoomsResponse), listed
        assert [r.room_id for r in listed.public_rooms] == [room]
        entry = listed.public_rooms[0]
        assert (entry.name, entry.topic, entry.num_joined_members, entry.join_rule) == (
            "Lounge", "Tea and biscuits", 2, "public")
        assert entry.world_readable is False and entry.guest_can_join is False
        assert entry.canonical_alias is None  # deleted above

        # More public rooms (one a space): pages of two, and a search.
        extra = []
        for name, space in (("Chess club", False), ("Garden", False), ("Space of things", True)):
            r = await alice.room_create(visibility=RoomVisibility.public, name=name, space=space)
            assert isinstance(r, RoomCreateResponse), r
            extra.append(r.room_id)
        private = await alice.room_create(name="Hidden")
        assert isinstance(private, RoomCreateResponse)
        seen: list[str] = []
        since: str | None = None
        for _ in range(5):
            page = await alice.list_public_rooms(limit=2, since=since)
            assert isinstance(page, PublicRoomsResponse), page
            assert page.total_room_count_estimate == 4 and len(page.public_rooms) <= 2
            seen.extend(r.room_id for r in page.public_rooms)
            since = page.next_batch
            if since is None:
                break
        assert seen[0] == room and set(seen) == {room, *extra} and len(seen) == 4  # largest first
        found = await alice.list_public_rooms(filter_generic_search_term="chess")
        assert isinstance(found, PublicRoomsResponse), found
        assert [r.name for r in found.public_rooms] == ["Chess club"]
        spaces = await alice.list_public_rooms(filter_room_types=["m.space"])
        assert isinstance(spaces, PublicRoomsResponse)
        assert [(r.name, r.room_type) for r in spaces.public_rooms] == [("Space of things", "m.space")]

        # Unpublished: gone from the list.
        status, _ = await raw(server, "PUT", f"{V3}/directory/list/room/{room}", token=alice.access_token,
                              json={"visibility": "private"})
        assert status == 200
        status, body = await raw(server, "GET", f"{V3}/publicRooms")
        assert status == 200 and room not in [r["room_id"] for r in body["chunk"]]
        assert body["total_room_count_estimate"] == 3
        status, body = await raw(server, "GET", f"{V3}/publicRooms?since=bogus")
        assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")


async def test_join_by_alias_and_directories_over_federation(pair: tuple[RunningServer, RunningServer]) -> None:
    a, b = pair
    async with nio_user(a, "alice") as alice, nio_user(b, "bob") as bob:
        alias = f"#pub:{name_of(a)}"
        created = await alice.room_create(visibility=RoomVisibility.public, alias="pub", name="Pub",
                                          topic="Across servers")
        assert isinstance(created, RoomCreateResponse), created
        room = created.room_id

        # B resolves A's alias by asking A (/query/directory).
        resolved = await bob.room_resolve_alias(alias)
        assert isinstance(resolved, RoomResolveAliasResponse), resolved
        assert (resolved.room_id, resolved.servers) == (room, [name_of(a)])
        missing = await bob.room_resolve_alias(f"#nope:{name_of(a)}")
        assert isinstance(missing, RoomResolveAliasError) and missing.status_code == "M_NOT_FOUND", missing
        status, body = await raw(b, "GET", alias_path("#x:localhost:1"))  # nobody listens there
        assert (status, body["errcode"]) == (502, "M_UNKNOWN")

        # Bob joins by alias over federation, and they talk.
        joined = await bob.join(alias)
        assert isinstance(joined, JoinResponse) and joined.room_id == room, joined
        assert isinstance(await bob.room_send(room, TEXT, msg("hello from b")), RoomSendResponse)
        assert isinstance(await alice.room_send(room, TEXT, msg("hello from a")), RoomSendResponse)
        got_a: list[str] = []
        await sync_until(alice, lambda r: bool(got_a.extend(timeline_bodies(r, room))) or "hello from b" in got_a)
        got_b: list[str] = []
        await sync_until(bob, lambda r: bool(got_b.extend(timeline_bodies(r, room))) or "hello from a" in got_b)

        # Now both servers are in the room: A answers with itself first.
        resolved = await bob.room_resolve_alias(alias)
        assert isinstance(resolved, RoomResolveAliasResponse)
        assert resolved.servers == [name_of(a), name_of(b)]

        # Each server's directory, read locally and by the other server (/publicRooms).
        bobs = await bob.room_create(visibility=RoomVisibility.public, name="Bob's bar", alias="bar")
        assert isinstance(bobs, RoomCreateResponse), bobs

        async def listed(client_token: str, on: RunningServer, server: str | None) -> list[tuple[str, int]]:
            query = f"?server={quote(server)}" if server else ""
            status, body = await raw(on, "GET", f"{V3}/publicRooms{query}", token=client_token)
            assert status == 200, body
            return [(r["room_id"], r["num_joined_members"]) for r in body["chunk"]]

        async def pub_has_two() -> bool:
            return await listed(alice.access_token, a, None) == [(room, 2)]
        await eventually(pub_has_two)
        assert await listed(bob.access_token, b, name_of(a)) == [(room, 2)]
        assert await listed(bob.access_token, b, None) == [(bobs.room_id, 1)]
        remote = await alice.list_public_rooms(server=name_of(b))
        assert isinstance(remote, PublicRoomsResponse), remote
        assert [(r.room_id, r.name, r.canonical_alias) for r in remote.public_rooms] == [
            (bobs.room_id, "Bob's bar", f"#bar:{name_of(b)}")]
        # The filtered form goes to the other server as POST /publicRooms.
        searched = await alice.list_public_rooms(server=name_of(b), filter_generic_search_term="bar")
        assert isinstance(searched, PublicRoomsResponse) and len(searched.public_rooms) == 1, searched
        searched = await alice.list_public_rooms(server=name_of(b), filter_generic_search_term="pub")
        assert isinstance(searched, PublicRoomsResponse) and searched.public_rooms == [], searched
        # Another server's directory is read for clients with a token only.
        status, body = await raw(a, "GET", f"{V3}/publicRooms?server={quote(name_of(b))}")
        assert (status, body["errcode"]) == (401, "M_MISSING_TOKEN")

        # Alice on A joins Bob's room on B by its alias.
        back = await alice.join(f"#bar:{name_of(b)}")
        assert isinstance(back, JoinResponse) and back.room_id == bobs.room_id, back
