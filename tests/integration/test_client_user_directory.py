"""The user directory search and the listings of optional features this server lacks,
through the client API (both engines, a real server, matrix-nio and raw HTTP)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nio import JoinResponse, RoomCreateResponse, RoomPreset

from tests.clients import client_server, eventually, nio_user, raw
from tests.conftest import DatabaseFactory

V3 = "/_matrix/client/v3"
SEARCH = f"{V3}/user_directory/search"


async def test_user_directory_search(db_factory: DatabaseFactory, tmp_path: Path,
                                     test_ca: tuple[Path, Path]) -> None:
    async with client_server(db_factory, tmp_path / "a", test_ca) as server, \
            nio_user(server, "alice") as alice, nio_user(server, "bob") as bob, \
            nio_user(server, "carol") as carol, nio_user(server, "dave") as dave:
        shared = await alice.room_create(name="Ours", invite=[bob.user_id])
        assert isinstance(shared, RoomCreateResponse), shared
        assert isinstance(await bob.join(shared.room_id), JoinResponse)
        public = await carol.room_create(name="Lobby", preset=RoomPreset.public_chat)
        assert isinstance(public, RoomCreateResponse), public
        private = await dave.room_create(name="Alone")  # dave shares no room, is in no public one
        assert isinstance(private, RoomCreateResponse), private
        status, _ = await raw(server, "PUT", f"{V3}/profile/{bob.user_id}/displayname",
                              token=bob.access_token, json={"displayname": "Bobby Tables"})
        assert status == 200

        async def search(term: str, limit: int | None = None) -> dict[str, Any]:
            body: dict[str, Any] = {"search_term": term}
            if limit is not None:
                body["limit"] = limit
            status, found = await raw(server, "POST", SEARCH, token=alice.access_token, json=body)
            assert status == 200, found
            return dict(found)

        # Bob shares a room with Alice: found by ID and, case-insensitively, by name (once
        # his rename reached his member event, which happens in the background).
        async def renamed() -> bool:
            return (await search("bob"))["results"] == [{"user_id": bob.user_id, "display_name": "Bobby Tables"}]
        await eventually(renamed)
        assert await search("bob") == {
            "results": [{"user_id": bob.user_id, "display_name": "Bobby Tables"}], "limited": False}
        assert (await search("TABLES"))["results"] == [{"user_id": bob.user_id, "display_name": "Bobby Tables"}]
        # Carol is in a public room; Dave is in neither kind.
        assert (await search("carol"))["results"] == [{"user_id": carol.user_id, "display_name": "carol"}]
        assert await search("dave") == {"results": [], "limited": False}
        # A term every user ID here matches (the server name), one result at a time.
        everyone = await search(alice.user_id.split(":", 1)[1])
        assert {r["user_id"] for r in everyone["results"]} == {
            alice.user_id, bob.user_id, carol.user_id}
        one = await search(alice.user_id.split(":", 1)[1], limit=1)
        assert len(one["results"]) == 1 and one["limited"] is True

        for payload, errcode in (({}, "M_BAD_JSON"), ({"search_term": 5}, "M_BAD_JSON"),
                                 ({"search_term": "b", "limit": "x"}, "M_BAD_JSON"),
                                 ({"search_term": "b", "limit": -1}, "M_BAD_JSON")):
            status, body = await raw(server, "POST", SEARCH, token=alice.access_token, json=payload)
            assert (status, body["errcode"]) == (400, errcode), body
        status, body = await raw(server, "POST", SEARCH, token=alice.access_token, data=b"{")
        assert (status, body["errcode"]) == (400, "M_NOT_JSON")
        status, body = await raw(server, "POST", SEARCH, json={"search_term": "b"})
        assert (status, body["errcode"]) == (401, "M_MISSING_TOKEN")


async def test_listings_of_features_this_server_lacks(db_factory: DatabaseFactory, tmp_path: Path,
                                                      test_ca: tuple[Path, Path]) -> None:
    async with client_server(db_factory, tmp_path / "a", test_ca) as server, nio_user(server, "alice") as alice:
        for path, expected in (("pushers", {"pushers": []}), ("account/3pid", {"threepids": []}),
                               ("thirdparty/protocols", {}), ("voip/turnServer", {})):
            status, body = await raw(server, "GET", f"{V3}/{path}", token=alice.access_token)
            assert (status, body) == (200, expected), path
            status, body = await raw(server, "GET", f"{V3}/{path}")
            assert (status, body["errcode"]) == (401, "M_MISSING_TOKEN"), path
