"""POST /search across two servers, on SQLite and PostgreSQL: a word is found in a room
the user is in (messages received over federation indexed too), nothing from rooms they
are not in, nothing from before their join when history visibility forbids it, nothing
redacted; ordering, pagination, groupings, context and bad input."""

from __future__ import annotations

from typing import Any

from nio import JoinResponse, RoomCreateResponse

from homeserver.server import RunningServer
from tests.clients import eventually, msg, nio_user, raw, sync_until
from tests.integration.test_relations import send

V3 = "/_matrix/client/v3"


def query(term: str, **extra: Any) -> dict[str, Any]:
    return {"search_categories": {"room_events": {"search_term": term, **extra}}}


async def search(server: RunningServer, token: str, body: dict[str, Any], batch: str | None = None) -> dict[str, Any]:
    path = f"{V3}/search" + (f"?next_batch={batch}" if batch else "")
    status, found = await raw(server, "POST", path, token=token, json=body)
    assert status == 200, found
    return dict(found["search_categories"]["room_events"])


def ids(section: dict[str, Any]) -> list[str]:
    return [r["result"]["event_id"] for r in section["results"]]


async def test_search_finds_only_what_the_user_may_see(pair: tuple[RunningServer, RunningServer]) -> None:
    a, b = pair
    async with nio_user(a, "alice") as alice, nio_user(b, "bob") as bob:
        created = await alice.room_create(name="Fruit", invite=[bob.user_id], initial_state=[
            {"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": "joined"}}])
        assert isinstance(created, RoomCreateResponse), created
        room = created.room_id
        other = await alice.room_create(name="Private")
        assert isinstance(other, RoomCreateResponse), other
        early = await send(a, alice.access_token, room, msg("secret banana plans"), "s0")
        private = await send(a, alice.access_token, other.room_id, msg("banana republic"), "s1")
        await sync_until(bob, lambda r: room in r.rooms.invite)
        assert isinstance(await bob.join(room), JoinResponse)
        split = await send(a, alice.access_token, room, msg("Banana split for everyone"), "s2")
        mine = await send(b, bob.access_token, room, msg("bananas are great"), "s3")
        gone = await send(b, bob.access_token, room, msg("banana typo"), "s4")
        status, _ = await raw(b, "PUT", f"{V3}/rooms/{room}/redact/{gone}/x", token=bob.access_token, json={})
        assert status == 200

        async def bob_finds() -> bool:
            found = await search(b, bob.access_token, query("banana", order_by="recent"))
            # (In the order B stored them: Alice's may arrive after Bob's own.)
            return sorted(ids(found)) == sorted([mine, split])
        await eventually(bob_finds)
        # Alice (A) finds Bob's message received over federation, and her own everywhere.
        async def alice_finds() -> bool:
            return set(ids(await search(a, alice.access_token, query("banana")))) == {early, private, split, mine}
        await eventually(alice_finds)

        found = await search(a, alice.access_token, query("BANANA split", event_context={
            "before_limit": 1, "after_limit": 1, "include_profile": True}, groupings={
            "group_by": [{"key": "room_id"}, {"key": "sender"}]}))
        assert ids(found) == [split] and found["highlights"] == ["banana", "split"]
        context = found["results"][0]["context"]
        assert [e["event_id"] for e in context["events_after"]] == [mine]
        assert context["events_before"][0]["state_key"] == bob.user_id  # his join
        assert alice.user_id in context["profile_info"]
        assert found["groups"]["room_id"][room]["results"] == [split]
        assert found["groups"]["sender"][alice.user_id]["results"] == [split]

        # Filters, keys and pagination.
        found = await search(b, bob.access_token, query("banana", filter={"senders": [bob.user_id]}))
        assert ids(found) == [mine]
        found = await search(a, alice.access_token, query("fruit", keys=["content.name"]))
        assert len(ids(found)) == 1 and found["results"][0]["result"]["type"] == "m.room.name"
        found = await search(a, alice.access_token, query("banana", filter={"rooms": [other.room_id]},
                                                          include_state=True))
        assert ids(found) == [private]
        assert "m.room.create" in {e["type"] for e in found["state"][other.room_id]}
        first = await search(a, alice.access_token, query("banana", order_by="recent", filter={"limit": 2}))
        assert ids(first) == [mine, split] and first["count"] == 4
        rest = await search(a, alice.access_token, query("banana", order_by="recent", filter={"limit": 2}),
                            first["next_batch"])
        assert ids(rest) == [private, early]
        ranked = await search(a, alice.access_token, query("banana", filter={"limit": 3}))
        more = await search(a, alice.access_token, query("banana", filter={"limit": 3}), ranked["next_batch"])
        assert len(ids(ranked)) == 3 and set(ids(ranked) + ids(more)) == {early, private, split, mine}

        for bad in (query(5), query("x", order_by="oldest"), query("x", keys=["content.secret"]),
                    query("x", groupings={"group_by": [{"key": "type"}]})):
            status, body = await raw(a, "POST", f"{V3}/search", token=alice.access_token, json=bad)
            assert (status, body["errcode"]) == (400, "M_BAD_JSON"), (bad, body)
        status, body = await raw(a, "POST", f"{V3}/search?next_batch=nope", token=alice.access_token,
                                 json=query("x"))
        assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")
