"""Spaces across two of our servers (real HTTPS, both engines): a space on A holds a room
on A and a room on B that no user of A is in; A's client asks A for the hierarchy and gets
B's room through the federation ``/hierarchy`` of B. Pagination, depth, suggested-only
and the spec's errors for bad input; the federation endpoint itself answers children the
requesting server may see, lists those it may not as inaccessible, and 404 otherwise."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest

from homeserver.net.client import FederationRequestError
from homeserver.server import RunningServer
from tests.clients import eventually, nio_user, raw, server_name

V1 = "/_matrix/client/v1"
V3 = "/_matrix/client/v3"
FED = "/_matrix/federation/v1"


async def create(server: RunningServer, token: str, **body: Any) -> str:
    status, reply = await raw(server, "POST", f"{V3}/createRoom", token=token, json=body)
    assert status == 200, reply
    return str(reply["room_id"])


async def add_child(server: RunningServer, token: str, space: str, child: str, via: list[str], **extra: Any) -> None:
    status, reply = await raw(
        server, "PUT", f"{V3}/rooms/{space}/state/m.space.child/{child}", token=token, json={"via": via, **extra}
    )
    assert status == 200, reply


def hierarchy_path(room_id: str, **query: str) -> str:
    params = "&".join(f"{k}={quote(v, safe='')}" for k, v in query.items())
    return f"{V1}/rooms/{room_id}/hierarchy" + (f"?{params}" if params else "")


async def test_client_hierarchy_across_two_servers(pair: tuple[RunningServer, RunningServer]) -> None:
    a, b = pair
    a_name, b_name = server_name(a), server_name(b)
    async with nio_user(a, "alice") as alice, nio_user(a, "dave") as dave, nio_user(b, "bob") as bob:
        tok = alice.access_token
        space = await create(a, tok, name="Space", preset="public_chat", creation_content={"type": "m.space"})
        local = await create(a, tok, name="On A", preset="public_chat")
        secret = await create(a, tok, name="Secret", preset="private_chat")
        remote = await create(b, bob.access_token, name="On B", preset="public_chat", topic="from b")
        await add_child(a, tok, space, local, [a_name], order="b")
        await add_child(a, tok, space, remote, [b_name], order="a", suggested=True)
        await add_child(a, tok, space, secret, [a_name], order="c")
        # A room nobody can tell about: its only via refuses connections.
        await add_child(a, tok, space, "!nowhere:unknown.invalid", ["127.0.0.1:1"], order="d")
        # A holds nothing of B's room: no user of A is in it.
        assert not await a.services.rooms.participating(remote)

        status, reply = await raw(a, "GET", hierarchy_path(space), token=tok)
        assert status == 200, reply
        rooms = reply["rooms"]
        assert [r["room_id"] for r in rooms] == [space, remote, local, secret]
        assert "next_batch" not in reply
        top = rooms[0]
        assert top["room_type"] == "m.space" and top["name"] == "Space" and top["join_rule"] == "public"
        assert [c["state_key"] for c in top["children_state"]] == [remote, local, secret, "!nowhere:unknown.invalid"]
        assert all(isinstance(c["origin_server_ts"], int) and c["type"] == "m.space.child"
                   for c in top["children_state"])
        from_b = rooms[1]
        assert (from_b["name"], from_b["topic"], from_b["num_joined_members"]) == ("On B", "from b", 1)
        assert from_b["children_state"] == []

        # Dave (on A, in none of them) sees the public rooms only.
        status, reply = await raw(a, "GET", hierarchy_path(space), token=dave.access_token)
        assert status == 200, reply
        assert [r["room_id"] for r in reply["rooms"]] == [space, remote, local]

        # Depth and suggested-only.
        status, reply = await raw(a, "GET", hierarchy_path(space, max_depth="0"), token=tok)
        assert [r["room_id"] for r in reply["rooms"]] == [space]
        status, reply = await raw(a, "GET", hierarchy_path(space, suggested_only="true"), token=tok)
        assert [r["room_id"] for r in reply["rooms"]] == [space, remote]
        assert [c["state_key"] for c in reply["rooms"][0]["children_state"]] == [remote]


async def test_client_hierarchy_pages_and_bad_input(pair: tuple[RunningServer, RunningServer]) -> None:
    a, _ = pair
    a_name = server_name(a)
    async with nio_user(a, "alice") as alice, nio_user(a, "dave") as dave:
        tok = alice.access_token
        space = await create(a, tok, name="Space", preset="public_chat", creation_content={"type": "m.space"})
        children = [await create(a, tok, name=f"c{i}", preset="public_chat") for i in range(3)]
        for i, child in enumerate(children):
            await add_child(a, tok, space, child, [a_name], order=str(i))
        secret = await create(a, tok, name="Secret", preset="private_chat")

        pages: list[list[str]] = []
        token: str | None = None
        while True:
            query = {"limit": "2", **({"from": token} if token else {})}
            status, reply = await raw(a, "GET", hierarchy_path(space, **query), token=tok)
            assert status == 200, reply
            pages.append([r["room_id"] for r in reply["rooms"]])
            token = reply.get("next_batch")
            if token is None:
                break
            assert len(pages) < 5
        assert pages == [[space, children[0]], [children[1], children[2]]]

        # A token given with other parameters, or by another user, or made up.
        for query, who in (({"suggested_only": "true"}, tok), ({"max_depth": "3"}, tok), ({}, dave.access_token)):
            status, reply = await raw(a, "GET", hierarchy_path(space, limit="1"), token=tok)
            token = reply["next_batch"]
            status, bad = await raw(a, "GET", hierarchy_path(space, limit="1", **{"from": token}, **query),
                                    token=who)
            assert (status, bad["errcode"]) == (400, "M_INVALID_PARAM"), bad
        status, bad = await raw(a, "GET", hierarchy_path(space, **{"from": "made-up"}), token=tok)
        assert (status, bad["errcode"]) == (400, "M_INVALID_PARAM")

        for query in ({"limit": "0"}, {"limit": "x"}, {"max_depth": "-1"}, {"suggested_only": "maybe"}):
            status, bad = await raw(a, "GET", hierarchy_path(space, **query), token=tok)
            assert (status, bad["errcode"]) == (400, "M_INVALID_PARAM"), query
        # A room the user may not see, a room nobody knows, no token.
        status, bad = await raw(a, "GET", hierarchy_path(secret), token=dave.access_token)
        assert (status, bad["errcode"]) == (403, "M_FORBIDDEN")
        status, bad = await raw(a, "GET", hierarchy_path("!unknown:elsewhere.invalid"), token=tok)
        assert (status, bad["errcode"]) == (403, "M_FORBIDDEN")
        status, bad = await raw(a, "GET", hierarchy_path(space))
        assert (status, bad["errcode"]) == (401, "M_MISSING_TOKEN")


async def test_federation_hierarchy(pair: tuple[RunningServer, RunningServer]) -> None:
    a, b = pair
    a_name = server_name(a)
    client = b.services.federation_client

    async def ask(room_id: str, **query: str) -> Any:
        return await client.get_json(a_name, f"{FED}/hierarchy/{quote(room_id, safe='')}", query=dict(query))

    async with nio_user(a, "alice") as alice:
        tok = alice.access_token
        space = await create(a, tok, name="Space", preset="public_chat", creation_content={"type": "m.space"})
        open_room = await create(a, tok, name="Open", preset="public_chat")
        secret = await create(a, tok, name="Secret", preset="private_chat")
        hidden_space = await create(a, tok, name="Hidden", preset="private_chat",
                                    creation_content={"type": "m.space"})
        await add_child(a, tok, space, open_room, [a_name], suggested=True)
        await add_child(a, tok, space, secret, [a_name])
        await add_child(a, tok, space, "!gone:unknown.invalid", ["127.0.0.1:1"])

        reply = await ask(space)
        assert reply["room"]["room_id"] == space and reply["room"]["room_type"] == "m.space"
        assert {c["state_key"] for c in reply["room"]["children_state"]} == {open_room, secret,
                                                                            "!gone:unknown.invalid"}
        assert [c["room_id"] for c in reply["children"]] == [open_room]
        assert reply["children"][0]["name"] == "Open" and reply["children"][0]["join_rule"] == "public"
        assert reply["inaccessible_children"] == [secret]

        reply = await ask(space, suggested_only="true")
        assert [c["state_key"] for c in reply["room"]["children_state"]] == [open_room]
        assert reply["inaccessible_children"] == []

        # A room restricted to the space's members: visible to B once a user of B joined the space.
        restricted = await create(a, tok, name="Members", preset="private_chat", initial_state=[{
            "type": "m.room.join_rules", "state_key": "",
            "content": {"join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": space}]},
        }])
        await add_child(a, tok, space, restricted, [a_name])
        reply = await ask(space)
        assert set(reply["inaccessible_children"]) == {secret, restricted}
        async with nio_user(b, "bob") as bob:
            status, joined = await raw(b, "POST", f"{V3}/join/{space}?server_name={a_name}",
                                       token=bob.access_token, json={})
            assert status == 200, joined

            async def sees_restricted() -> bool:
                reply = await ask(space)
                return restricted in [c["room_id"] for c in reply["children"]]
            await eventually(sees_restricted)
            # Bob's own server walks the space it now holds and asks A for the rest: Bob,
            # a member of the space, sees the restricted room; not the secret one.
            status, walked = await raw(b, "GET", hierarchy_path(space), token=bob.access_token)
            assert status == 200, walked
            assert [r["room_id"] for r in walked["rooms"]] == [space, open_room, restricted]
        reply = await ask(space)
        members = next(c for c in reply["children"] if c["room_id"] == restricted)
        assert members["join_rule"] == "restricted" and members["allowed_room_ids"] == [space]
        assert reply["inaccessible_children"] == [secret]

        for room_id in (hidden_space, secret, "!unknown:elsewhere.invalid"):
            with pytest.raises(FederationRequestError) as info:
                await ask(room_id)
            assert (info.value.status, info.value.errcode) == (404, "M_NOT_FOUND")
        with pytest.raises(FederationRequestError) as info:
            await ask(space, suggested_only="maybe")
        assert (info.value.status, info.value.errcode) == (400, "M_INVALID_PARAM")
