"""Knocking (room versions 10, 11, 12), on real servers on loopback, both engines.

Over federation: Bob on B knocks (make_knock/send_knock) on Alice's room on A whose join
rule is ``knock``; his /sync shows the room under ``rooms.knock`` with its stripped state
and his own knock; A holds the knock in the room's state and Alice sees it in her
timeline; Alice invites him, he joins, and messages flow. Refusals: a public or invite-only
room (403), a banned user (403), an unknown room (404), the resident's checks of
``make_knock`` (ver, user of the origin). A knock retracted with /leave. On one server: a
local knock, rejected with a kick, knocked again, accepted with an invite, joined."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from nio import AsyncClient, JoinResponse, RoomKnockResponse, RoomSendResponse

from homeserver.events.versions import get_room_version
from homeserver.net.client import FederationRequestError
from homeserver.server import RunningServer
from tests.clients import client_server, eventually, msg, nio_user, raw, talk
from tests.clients import server_name as name
from tests.conftest import DatabaseFactory

V3 = "/_matrix/client/v3"
TEXT = "m.room.message"


async def create_room(server: RunningServer, client: AsyncClient, version: str, join_rule: str | None,
                      preset: str = "private_chat") -> str:
    body: dict[str, Any] = {"room_version": version, "preset": preset, "name": "Door"}
    if join_rule is not None:
        body["initial_state"] = [{"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": join_rule}}]
    status, resp = await raw(server, "POST", f"{V3}/createRoom", token=client.access_token, json=body)
    assert status == 200, resp
    return str(resp["room_id"])


async def knock(server: RunningServer, client: AsyncClient, room: str, via: str | None = None,
                reason: str | None = None) -> tuple[int, Any]:
    path = f"{V3}/knock/{quote(room, safe='')}"
    if via is not None:
        path += f"?via={quote(via, safe='')}"
    return await raw(server, "POST", path, token=client.access_token, json={"reason": reason} if reason else {})


async def raw_sync(server: RunningServer, client: AsyncClient, since: str | None = None,
                   timeout: int = 0) -> dict[str, Any]:
    path = f"{V3}/sync?timeout={timeout}" + (f"&since={quote(since, safe='')}" if since else "")
    status, body = await raw(server, "GET", path, token=client.access_token)
    assert status == 200, body
    assert isinstance(body, dict)
    return body


async def raw_sync_until(server: RunningServer, client: AsyncClient, since: str | None,
                         predicate: Any, rounds: int = 20) -> tuple[dict[str, Any], str]:
    """Long-poll the raw /sync until ``predicate(body)`` holds; (body, next_batch)."""
    for _ in range(rounds):
        body = await raw_sync(server, client, since, timeout=3000 if since else 0)
        since = body["next_batch"]
        if predicate(body):
            return body, str(since)
    raise AssertionError("condition not reached by /sync")


def knock_state(body: dict[str, Any], room: str) -> list[dict[str, Any]] | None:
    entry = body["rooms"].get("knock", {}).get(room)
    return None if entry is None else list(entry["knock_state"]["events"])


async def member_state(server: RunningServer, client: AsyncClient, room: str, user_id: str) -> str | None:
    status, body = await raw(server, "GET", f"{V3}/rooms/{room}/state/m.room.member/{user_id}",
                             token=client.access_token)
    return str(body["membership"]) if status == 200 else None


@pytest.mark.parametrize("version", ["7", "9", "10", "11", "12"])
async def test_knock_over_federation_then_invite_and_join(
    pair: tuple[RunningServer, RunningServer], version: str
) -> None:
    a, b = pair
    async with nio_user(a, "alice") as alice, nio_user(b, "bob") as bob:
        room = await create_room(a, alice, version, "knock")
        _, since = await raw_sync_until(b, bob, None, lambda body: True)

        # 1. Bob knocks from B: through nio where the room ID names the resident, else via.
        if version == "12":
            status, resp = await knock(b, bob, room, via=name(a), reason="let me in")
            assert (status, resp) == (200, {"room_id": room})
        else:
            knocked = await bob.room_knock(room, reason="let me in")
            assert isinstance(knocked, RoomKnockResponse), knocked

        # 2. His /sync shows the room under knock: stripped state and his own knock.
        body, since = await raw_sync_until(b, bob, since, lambda body: knock_state(body, room) is not None)
        events = knock_state(body, room)
        assert events is not None
        by_type = {(e["type"], e["state_key"]): e for e in events}
        assert by_type[("m.room.join_rules", "")]["content"]["join_rule"] == "knock"
        assert by_type[("m.room.name", "")]["content"]["name"] == "Door"
        assert ("m.room.create", "") in by_type
        own = by_type[("m.room.member", bob.user_id)]
        assert own["content"] == {"membership": "knock", "reason": "let me in", "displayname": "bob"}
        assert set(own) == {"type", "state_key", "content", "sender"}
        assert room not in body["rooms"]["invite"] and room not in body["rooms"]["join"]
        # Knocking again while the knock stands changes nothing.
        status, _ = await knock(b, bob, room, via=name(a))
        assert status == 200

        # 3. A holds the knock in the room's state, and Alice sees it in her timeline.
        assert await member_state(a, alice, room, bob.user_id) == "knock"

        def alice_sees_knock(body: dict[str, Any]) -> bool:
            joined = body["rooms"]["join"].get(room)
            return joined is not None and any(
                e["type"] == "m.room.member" and e.get("state_key") == bob.user_id
                and e["content"].get("membership") == "knock" for e in joined["timeline"]["events"])
        await raw_sync_until(a, alice, None, alice_sees_knock)

        # 4. Alice accepts (invites); Bob's /sync moves the room from knock to invite.
        status, _ = await raw(a, "POST", f"{V3}/rooms/{room}/invite", token=alice.access_token,
                              json={"user_id": bob.user_id})
        assert status == 200
        body, since = await raw_sync_until(b, bob, since, lambda body: room in body["rooms"]["invite"])
        assert knock_state(body, room) is None
        initial = await raw_sync(b, bob)
        assert room in initial["rooms"]["invite"] and knock_state(initial, room) is None

        # 5. Bob joins; messages flow both ways.
        if version == "12":
            status, _ = await raw(b, "POST", f"{V3}/join/{quote(room, safe='')}?via={name(a)}",
                                  token=bob.access_token, json={})
            assert status == 200
        else:
            assert isinstance(await bob.join(room), JoinResponse)
        await talk(room, alice, bob)
        assert await member_state(a, alice, room, bob.user_id) == "join"


async def test_knock_refusals_over_federation(pair: tuple[RunningServer, RunningServer]) -> None:
    a, b = pair
    async with nio_user(a, "alice") as alice, nio_user(b, "bob") as bob:
        public = await create_room(a, alice, "11", None, preset="public_chat")
        private = await create_room(a, alice, "11", None)
        door = await create_room(a, alice, "11", "knock")
        for room in (public, private):
            status, body = await knock(b, bob, room, via=name(a))
            assert (status, body["errcode"]) == (403, "M_FORBIDDEN"), body
            assert await member_state(a, alice, room, bob.user_id) is None
        # Unknown room: 404 (A answers 404; a room ID of ours we do not know: 404 too).
        for room in (f"!nosuchroom:{name(a)}", f"!nosuchroom:{name(b)}"):
            status, body = await knock(b, bob, room, via=name(a))
            assert (status, body["errcode"]) == (404, "M_NOT_FOUND"), body
        status, body = await knock(b, bob, "not-a-room")
        assert status == 400

        # The resident's checks of make_knock.
        fed = b.services.federation_client
        path = f"/_matrix/federation/v1/make_knock/{quote(door, safe='')}/{quote(bob.user_id, safe='')}"
        with pytest.raises(FederationRequestError) as e:
            await fed.get_json(name(a), path)
        assert (e.value.status, e.value.errcode) == (400, "M_MISSING_PARAM")
        with pytest.raises(FederationRequestError) as e:
            await fed.get_json(name(a), path, query={"ver": ["1", "10"]})
        assert e.value.errcode == "M_INCOMPATIBLE_ROOM_VERSION"
        assert isinstance(e.value.body, dict) and e.value.body["room_version"] == "11"
        wrong = f"/_matrix/federation/v1/make_knock/{quote(door, safe='')}/{quote(alice.user_id, safe='')}"
        with pytest.raises(FederationRequestError) as e:
            await fed.get_json(name(a), wrong, query={"ver": ["11"]})
        assert e.value.status == 403
        ok = await fed.get_json(name(a), path, query={"ver": ["11"]})
        assert ok["room_version"] == "11" and ok["event"]["content"] == {"membership": "knock"}
        # send_knock refuses an event that is not a knock (here: a signed join).
        pdu = dict(ok["event"], content={"membership": "join"}, origin=name(b), origin_server_ts=1)
        not_knock = b.services.rooms.builder.sign(pdu, get_room_version("11"))
        send = f"/_matrix/federation/v1/send_knock/{quote(door, safe='')}/{quote(not_knock.event_id, safe='')}"
        with pytest.raises(FederationRequestError) as e:
            await fed.put_json(name(a), send, not_knock.pdu)
        assert (e.value.status, e.value.errcode) == (400, "M_INVALID_PARAM")
        assert await member_state(a, alice, door, bob.user_id) is None

        # A knock retracted with /leave: A's state says leave, B's /sync puts it under leave.
        _, since = await raw_sync_until(b, bob, None, lambda body: True)
        status, _ = await knock(b, bob, door, via=name(a))
        assert status == 200
        status, _ = await raw(b, "POST", f"{V3}/rooms/{door}/leave", token=bob.access_token, json={})
        assert status == 200
        await raw_sync_until(b, bob, since, lambda body: door in body["rooms"]["leave"])
        assert await member_state(a, alice, door, bob.user_id) == "leave"

        # A banned user cannot knock (the resident refuses make_knock).
        status, _ = await raw(a, "POST", f"{V3}/rooms/{door}/ban", token=alice.access_token,
                              json={"user_id": bob.user_id})
        assert status == 200
        status, body = await knock(b, bob, door, via=name(a))
        assert (status, body["errcode"]) == (403, "M_FORBIDDEN"), body
        assert await member_state(a, alice, door, bob.user_id) == "ban"


async def test_knock_refused_and_invite_revoked_reach_the_users_server(
    pair: tuple[RunningServer, RunningServer]
) -> None:
    """B holds no state of A's room, so the kick that refuses Bob's knock, or revokes his
    invite, or the ban, reaches B only as a member event of a room it is not in: B takes it
    in (it ends the knock or invite) and Bob's /sync moves the room to ``leave``."""
    a, b = pair
    async with nio_user(a, "alice") as alice, nio_user(b, "bob") as bob:
        door = await create_room(a, alice, "11", "knock")
        _, since = await raw_sync_until(b, bob, None, lambda body: True)

        def left_with(room: str, membership: str) -> Any:
            def check(body: dict[str, Any]) -> bool:
                entry = body["rooms"]["leave"].get(room)
                return entry is not None and any(
                    e["type"] == "m.room.member" and e.get("state_key") == bob.user_id
                    and e["content"].get("membership") == membership and e["sender"] == alice.user_id
                    for e in entry["timeline"]["events"])
            return check

        # 1. A knock refused (a kick): Bob's room moves from knock to leave.
        status, _ = await knock(b, bob, door, via=name(a))
        assert status == 200
        _, since = await raw_sync_until(b, bob, since, lambda body: knock_state(body, door) is not None)
        status, _ = await raw(a, "POST", f"{V3}/rooms/{door}/kick", token=alice.access_token,
                              json={"user_id": bob.user_id, "reason": "not today"})
        assert status == 200
        body, since = await raw_sync_until(b, bob, since, left_with(door, "leave"))
        assert door not in body["rooms"]["knock"]
        assert (await b.services.rooms.rooms_for_user(bob.user_id))[door] == "leave"
        assert await b.services.event_store.get_room_version(door) is None  # no room event stored
        # He may knock again; the room is back under knock.
        status, _ = await knock(b, bob, door, via=name(a))
        assert status == 200
        _, since = await raw_sync_until(b, bob, since, lambda body: knock_state(body, door) is not None)

        # 2. The second knock ended with a ban: under leave, with the ban; knocking is refused.
        status, _ = await raw(a, "POST", f"{V3}/rooms/{door}/ban", token=alice.access_token,
                              json={"user_id": bob.user_id})
        assert status == 200
        _, since = await raw_sync_until(b, bob, since, left_with(door, "ban"))
        assert (await b.services.rooms.rooms_for_user(bob.user_id))[door] == "ban"
        status, body = await knock(b, bob, door, via=name(a))
        assert (status, body["errcode"]) == (403, "M_FORBIDDEN"), body

        # 3. An invite revoked (a kick of the invited user): from invite to leave.
        private = await create_room(a, alice, "12", None)
        status, _ = await raw(a, "POST", f"{V3}/rooms/{private}/invite", token=alice.access_token,
                              json={"user_id": bob.user_id})
        assert status == 200
        _, since = await raw_sync_until(b, bob, since, lambda body: private in body["rooms"]["invite"])
        status, _ = await raw(a, "POST", f"{V3}/rooms/{private}/kick", token=alice.access_token,
                              json={"user_id": bob.user_id})
        assert status == 200
        body, since = await raw_sync_until(b, bob, since, left_with(private, "leave"))
        assert private not in body["rooms"]["invite"]
        initial = await raw_sync(b, bob)
        assert private not in initial["rooms"]["invite"] and door not in initial["rooms"]["knock"]
        status, body = await raw(b, "POST", f"{V3}/join/{quote(private, safe='')}?via={name(a)}",
                                 token=bob.access_token, json={})
        assert status == 403, body
        # Leaving a room whose invite was revoked asks nobody and changes nothing.
        status, _ = await raw(b, "POST", f"{V3}/rooms/{private}/leave", token=bob.access_token, json={})
        assert status == 200
        assert (await b.services.rooms.rooms_for_user(bob.user_id))[private] == "leave"


async def test_local_knock_rejected_then_accepted(db_factory: DatabaseFactory, tmp_path: Path,
                                                  test_ca: tuple[Path, Path]) -> None:
    async with client_server(db_factory, tmp_path / "a", test_ca) as server, \
            nio_user(server, "alice") as alice, nio_user(server, "bob") as bob:
        room = await create_room(server, alice, "12", "knock_restricted")
        _, since = await raw_sync_until(server, bob, None, lambda body: True)
        status, resp = await knock(server, bob, room, reason="please")
        assert (status, resp) == (200, {"room_id": room})
        body, since = await raw_sync_until(server, bob, since, lambda body: knock_state(body, room) is not None)
        events = knock_state(body, room)
        assert events is not None
        assert {(e["type"], e["state_key"]) for e in events} >= {
            ("m.room.create", ""), ("m.room.join_rules", ""), ("m.room.member", bob.user_id)}
        assert await member_state(server, alice, room, bob.user_id) == "knock"
        # Bob may not send into the room he knocked on.
        status, _ = await raw(server, "PUT", f"{V3}/rooms/{room}/send/{TEXT}/t1", token=bob.access_token,
                              json=msg("early"))
        assert status == 403

        # Rejected (kicked): the room moves to leave. He may knock again.
        status, _ = await raw(server, "POST", f"{V3}/rooms/{room}/kick", token=alice.access_token,
                              json={"user_id": bob.user_id, "reason": "not now"})
        assert status == 200
        body, since = await raw_sync_until(server, bob, since, lambda body: room in body["rooms"]["leave"])
        assert knock_state(body, room) is None
        status, _ = await knock(server, bob, room)
        assert status == 200
        await raw_sync_until(server, bob, since, lambda body: knock_state(body, room) is not None)

        # Accepted (invited): invite, then join, then talk.
        status, _ = await raw(server, "POST", f"{V3}/rooms/{room}/invite", token=alice.access_token,
                              json={"user_id": bob.user_id})
        assert status == 200
        await raw_sync_until(server, bob, since, lambda body: room in body["rooms"]["invite"])
        assert isinstance(await bob.join(room), JoinResponse)
        assert isinstance(await bob.room_send(room, TEXT, msg("in")), RoomSendResponse)

        async def joined() -> bool:
            return await member_state(server, alice, room, bob.user_id) == "join"
        await eventually(joined)
