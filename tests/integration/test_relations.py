"""Relations, threads and bundled aggregations across two servers, on SQLite and
PostgreSQL: a thread reply sent on B shows in A's thread timeline (/relations, /threads)
and A's /sync carries the root's bundled m.thread; an edit is bundled whole under
m.replace on /event and /messages (only the sender's own); references; pagination; a
redacted reply drops out; events a user may not see are not returned."""

from __future__ import annotations

from typing import Any

from nio import JoinResponse, RoomCreateResponse

from homeserver.server import RunningServer
from tests.clients import eventually, msg, nio_user, raw, sync_until

V1 = "/_matrix/client/v1"
V3 = "/_matrix/client/v3"
TEXT = "m.room.message"


async def send(server: RunningServer, token: str, room: str, content: dict[str, Any], txn: str) -> str:
    status, body = await raw(server, "PUT", f"{V3}/rooms/{room}/send/{TEXT}/{txn}", token=token, json=content)
    assert status == 200, body
    return str(body["event_id"])


def reply(root: str, body: str) -> dict[str, Any]:
    return {**msg(body), "m.relates_to": {"rel_type": "m.thread", "event_id": root, "is_falling_back": True,
                                          "m.in_reply_to": {"event_id": root}}}


def edit(target: str, body: str) -> dict[str, Any]:
    return {**msg(f"* {body}"), "m.new_content": msg(body),
            "m.relates_to": {"rel_type": "m.replace", "event_id": target}}


async def test_threads_edits_and_references_across_servers(pair: tuple[RunningServer, RunningServer]) -> None:
    a, b = pair
    async with nio_user(a, "alice") as alice, nio_user(b, "bob") as bob:
        created = await alice.room_create(name="Threads", invite=[bob.user_id])
        assert isinstance(created, RoomCreateResponse), created
        room = created.room_id
        await sync_until(bob, lambda r: room in r.rooms.invite)
        assert isinstance(await bob.join(room), JoinResponse)
        root = await send(a, alice.access_token, room, msg("thread root"), "t0")

        async def b_has(event_id: str) -> bool:
            status, _ = await raw(b, "GET", f"{V3}/rooms/{room}/event/{event_id}", token=bob.access_token)
            return status == 200
        await eventually(lambda: b_has(root))
        replies = [await send(b, bob.access_token, room, reply(root, f"reply {i}"), f"r{i}") for i in range(3)]

        # A's user sees B's replies in the thread timeline, newest first, page by page.
        async def a_sees_all() -> bool:
            status, page = await raw(a, "GET", f"{V1}/rooms/{room}/relations/{root}", token=alice.access_token)
            return status == 200 and len(page["chunk"]) == 3
        await eventually(a_sees_all)
        status, page = await raw(a, "GET", f"{V1}/rooms/{room}/relations/{root}/m.thread?limit=2",
                                 token=alice.access_token)
        assert status == 200, page
        assert [e["event_id"] for e in page["chunk"]] == [replies[2], replies[1]]
        assert page["chunk"][0]["content"]["body"] == "reply 2"
        status, rest = await raw(a, "GET", f"{V1}/rooms/{room}/relations/{root}/m.thread?limit=2"
                                 f"&from={page['next_batch']}", token=alice.access_token)
        assert status == 200 and [e["event_id"] for e in rest["chunk"]] == [replies[0]], rest
        assert "next_batch" not in rest
        status, forward = await raw(a, "GET", f"{V1}/rooms/{room}/relations/{root}/m.thread/{TEXT}?dir=f",
                                    token=alice.access_token)
        assert status == 200 and [e["event_id"] for e in forward["chunk"]] == replies
        status, none = await raw(a, "GET", f"{V1}/rooms/{room}/relations/{root}/m.replace",
                                 token=alice.access_token)
        assert status == 200 and none["chunk"] == []

        # recurse: a reaction to a reply is found through it; a filter applies at every level.
        status, body = await raw(b, "PUT", f"{V3}/rooms/{room}/send/m.reaction/re1", token=bob.access_token, json={
            "m.relates_to": {"rel_type": "m.annotation", "event_id": replies[1], "key": "+1"}})
        assert status == 200, body
        reaction = body["event_id"]

        async def a_sees_reaction() -> bool:
            status, page = await raw(a, "GET", f"{V1}/rooms/{room}/relations/{root}?recurse=true",
                                     token=alice.access_token)
            return status == 200 and reaction in [e["event_id"] for e in page["chunk"]]
        await eventually(a_sees_reaction)
        status, page = await raw(a, "GET", f"{V1}/rooms/{room}/relations/{root}?recurse=true",
                                 token=alice.access_token)
        assert [e["event_id"] for e in page["chunk"]] == [reaction, *reversed(replies)]
        assert page["recursion_depth"] == 3
        status, page = await raw(a, "GET", f"{V1}/rooms/{room}/relations/{root}/m.thread?recurse=true",
                                 token=alice.access_token)
        assert [e["event_id"] for e in page["chunk"]] == list(reversed(replies))
        status, page = await raw(a, "GET", f"{V1}/rooms/{room}/relations/{root}/m.annotation?recurse=true",
                                 token=alice.access_token)
        assert page["chunk"] == []  # only reachable through an m.thread event

        # /threads: the root with its summary; Alice started it, so she participated.
        status, threads = await raw(a, "GET", f"{V1}/rooms/{room}/threads", token=alice.access_token)
        assert status == 200, threads
        assert [e["event_id"] for e in threads["chunk"]] == [root]
        summary = threads["chunk"][0]["unsigned"]["m.relations"]["m.thread"]
        assert summary["count"] == 3 and summary["current_user_participated"] is True
        assert summary["latest_event"]["event_id"] == replies[2]
        assert summary["latest_event"]["content"]["body"] == "reply 2"
        status, mine = await raw(b, "GET", f"{V1}/rooms/{room}/threads?include=participated",
                                 token=bob.access_token)
        assert status == 200 and [e["event_id"] for e in mine["chunk"]] == [root]

        # A's /sync carries the bundled m.thread on the root.
        status, synced = await raw(a, "GET", f"{V3}/sync?timeout=0", token=alice.access_token)
        assert status == 200, synced
        timeline = {e["event_id"]: e for e in synced["rooms"]["join"][room]["timeline"]["events"]}
        assert timeline[root]["unsigned"]["m.relations"]["m.thread"]["count"] == 3

        # A redacted reply drops out of the thread.
        status, _ = await raw(b, "PUT", f"{V3}/rooms/{room}/redact/{replies[0]}/x1", token=bob.access_token,
                              json={})
        assert status == 200

        async def two_left() -> bool:
            status, event = await raw(a, "GET", f"{V3}/rooms/{room}/event/{root}", token=alice.access_token)
            return status == 200 and event["unsigned"]["m.relations"]["m.thread"]["count"] == 2
        await eventually(two_left)

        # An edit by Alice, and one by Bob of Alice's message (not valid: not bundled).
        typo = await send(a, alice.access_token, room, msg("helo"), "t1")
        fixed = await send(a, alice.access_token, room, edit(typo, "hello"), "t2")
        await eventually(lambda: b_has(fixed))
        await send(b, bob.access_token, room, edit(typo, "hijacked"), "r9")
        ref = await send(b, bob.access_token, room,
                         {**msg("see above"), "m.relates_to": {"rel_type": "m.reference", "event_id": typo}}, "r10")
        await eventually(lambda: b_has(ref))
        for server, user in ((a, alice), (b, bob)):
            async def bundled(server: RunningServer = server, token: str = user.access_token) -> bool:
                status, event = await raw(server, "GET", f"{V3}/rooms/{room}/event/{typo}", token=token)
                return status == 200 and "m.reference" in event["unsigned"].get("m.relations", {})
            await eventually(bundled)
            status, event = await raw(server, "GET", f"{V3}/rooms/{room}/event/{typo}", token=user.access_token)
            assert event["content"]["body"] == "helo"  # the original content is kept (spec v1.7)
            relations = event["unsigned"]["m.relations"]
            assert relations["m.replace"]["event_id"] == fixed
            assert relations["m.replace"]["content"]["m.new_content"]["body"] == "hello"
            assert relations["m.reference"] == {"chunk": [{"event_id": ref}]}
            status, page = await raw(server, "GET", f"{V3}/rooms/{room}/messages?dir=b&limit=20",
                                     token=user.access_token)
            assert status == 200
            served = {e["event_id"]: e for e in page["chunk"]}
            assert served[typo]["unsigned"]["m.relations"]["m.replace"]["event_id"] == fixed
            # The edit itself has no edit of its own bundled.
            assert "m.relations" not in served[fixed]["unsigned"]


async def test_relations_hide_what_the_user_may_not_see(pair: tuple[RunningServer, RunningServer]) -> None:
    a, _ = pair
    async with nio_user(a, "alice") as alice, nio_user(a, "carol") as carol:
        created = await alice.room_create(name="Joined only", initial_state=[
            {"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": "joined"}},
            {"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "public"}},
        ])
        assert isinstance(created, RoomCreateResponse), created
        room = created.room_id
        before = await send(a, alice.access_token, room, msg("before carol"), "b0")
        await send(a, alice.access_token, room, reply(before, "early reply"), "b1")
        assert isinstance(await carol.join(room), JoinResponse)
        root = await send(a, alice.access_token, room, msg("while carol is here"), "b2")
        seen = await send(a, alice.access_token, room, reply(root, "carol sees this"), "b3")
        await send(a, alice.access_token, room, reply(before, "a late reply"), "b4")
        status, _ = await raw(a, "POST", f"{V3}/rooms/{room}/leave", token=carol.access_token, json={})
        assert status == 200
        await send(a, alice.access_token, room, reply(root, "after carol left"), "b5")

        # An event from before her join: not found; its thread is not listed.
        status, body = await raw(a, "GET", f"{V1}/rooms/{room}/relations/{before}", token=carol.access_token)
        assert (status, body["errcode"]) == (404, "M_NOT_FOUND"), body
        status, page = await raw(a, "GET", f"{V1}/rooms/{room}/relations/{root}", token=carol.access_token)
        assert status == 200 and [e["event_id"] for e in page["chunk"]] == [seen], page
        status, threads = await raw(a, "GET", f"{V1}/rooms/{room}/threads", token=carol.access_token)
        assert status == 200 and [e["event_id"] for e in threads["chunk"]] == [root], threads
        # Alice sees everything; a stranger nothing.
        status, page = await raw(a, "GET", f"{V1}/rooms/{room}/relations/{root}", token=alice.access_token)
        assert status == 200 and len(page["chunk"]) == 2
        async with nio_user(a, "dave") as dave:
            status, body = await raw(a, "GET", f"{V1}/rooms/{room}/relations/{root}", token=dave.access_token)
            assert (status, body["errcode"]) == (404, "M_NOT_FOUND")  # the spec's only refusal
        status, body = await raw(a, "GET", f"{V1}/rooms/{room}/relations/{root}?dir=x", token=alice.access_token)
        assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")
