"""Two of our servers on loopback, a matrix-nio user on each: one creates a room and
invites the other, who joins over federation; both talk and see each other's messages
through /sync; kick and ban reach the other server; profiles are fetched remotely."""

from __future__ import annotations

import asyncio

from nio import JoinResponse, RoomCreateResponse, RoomSendResponse, SyncResponse

from homeserver.client_api import NOTIFIER
from homeserver.server import RunningServer
from tests.clients import eventually, msg, nio_user, raw, sync_until, timeline_bodies

V3 = "/_matrix/client/v3"
TEXT = "m.room.message"


async def test_invite_join_talk_kick_ban_over_federation(pair: tuple[RunningServer, RunningServer]) -> None:
    a, b = pair
    async with nio_user(a, "alice") as alice, nio_user(b, "bob") as bob:
        created = await alice.room_create(name="Across", invite=[bob.user_id])
        assert isinstance(created, RoomCreateResponse), created
        room = created.room_id
        await alice.room_send(room, TEXT, msg("hello before you came"))

        # Bob's server received the invite (PUT /invite): it shows in his /sync.
        await sync_until(bob, lambda r: room in r.rooms.invite)
        joined = await bob.join(room)
        assert isinstance(joined, JoinResponse), joined
        assert isinstance(await bob.room_send(room, TEXT, msg("hi from b")), RoomSendResponse)
        assert isinstance(await alice.room_send(room, TEXT, msg("hi from a")), RoomSendResponse)

        # Each sees the other's message through /sync.
        got_a: list[str] = []
        await sync_until(alice, lambda r: bool(got_a.extend(timeline_bodies(r, room))) or "hi from b" in got_a)
        got_b: list[str] = []
        await sync_until(bob, lambda r: bool(got_b.extend(timeline_bodies(r, room))) or "hi from a" in got_b)
        assert "hi from b" in got_b, got_b  # his own echo too

        # Both servers agree on who is in the room.
        async def both_joined() -> bool:
            sa = await raw(a, "GET", f"{V3}/rooms/{room}/joined_members", token=alice.access_token)
            sb = await raw(b, "GET", f"{V3}/rooms/{room}/joined_members", token=bob.access_token)
            want = {alice.user_id, bob.user_id}
            return sa[0] == sb[0] == 200 and set(sa[1]["joined"]) == set(sb[1]["joined"]) == want
        await eventually(both_joined)

        # Remote profile through the federation query.
        status, body = await raw(a, "GET", f"{V3}/profile/{bob.user_id}")
        assert (status, body) == (200, {"displayname": "bob"})

        # Kick reaches Bob's server: his /sync puts the room under leave.
        status, _ = await raw(a, "POST", f"{V3}/rooms/{room}/kick", token=alice.access_token,
                              json={"user_id": bob.user_id, "reason": "out"})
        assert status == 200
        await sync_until(bob, lambda r: room in r.rooms.leave)
        status, body = await raw(b, "PUT", f"{V3}/rooms/{room}/send/{TEXT}/t-after-kick", token=bob.access_token,
                                 json=msg("let me in"))
        assert (status, body["errcode"]) == (403, "M_FORBIDDEN")

        # Re-invite, rejoin, then ban: the ban reaches Bob's server too.
        status, _ = await raw(a, "POST", f"{V3}/rooms/{room}/invite", token=alice.access_token,
                              json={"user_id": bob.user_id})
        assert status == 200
        await sync_until(bob, lambda r: room in r.rooms.invite)
        assert isinstance(await bob.join(room), JoinResponse)
        status, _ = await raw(a, "POST", f"{V3}/rooms/{room}/ban", token=alice.access_token,
                              json={"user_id": bob.user_id})
        assert status == 200

        async def banned_on_b() -> bool:
            row = await b.services.db.fetchval(
                "SELECT membership FROM current_state WHERE room_id = ? AND type = 'm.room.member'"
                " AND state_key = ?", room, bob.user_id)
            return row == "ban"
        await eventually(banned_on_b)
        resp = await sync_until(bob, lambda r: room in r.rooms.leave)
        assert isinstance(resp, SyncResponse)
        status, body = await raw(b, "POST", f"{V3}/rooms/{room}/join", token=bob.access_token, json={})
        assert status == 403 and body["errcode"] == "M_FORBIDDEN"


def _typing_users(resp: SyncResponse, room_id: str) -> list[str] | None:
    room = resp.rooms.join.get(room_id)
    for event in room.ephemeral if room else []:
        users = getattr(event, "users", None)
        if users is not None:
            return list(users)
    return None


async def test_remote_typing_wakes_a_waiting_sync(pair: tuple[RunningServer, RunningServer]) -> None:
    """Typing on B reaches A as an EDU and wakes Alice's long-polling /sync on A (one long
    poll, not a poll loop: without the wake-up it would return empty after 30 s); stopping
    is reported too, as an empty typing list."""
    a, b = pair
    async with nio_user(a, "alice") as alice, nio_user(b, "bob") as bob:
        created = await alice.room_create(name="Typing", preset=None, invite=[bob.user_id])
        assert isinstance(created, RoomCreateResponse), created
        room = created.room_id
        await sync_until(bob, lambda r: room in r.rooms.invite)
        assert isinstance(await bob.join(room), JoinResponse)
        await sync_until(alice, lambda r: room in r.rooms.join and any(
            getattr(e, "membership", None) == "join" and getattr(e, "state_key", None) == bob.user_id
            for e in r.rooms.join[room].timeline.events))

        notifier = a.runners[1].app[NOTIFIER]  # the client application's

        async def parked() -> bool:
            return notifier.waiting == 1

        async def typing(on: bool) -> list[str] | None:
            # A 60 s long-poll: only a wake-up brings it back within the 20 s allowed.
            started = asyncio.create_task(alice.sync(timeout=60_000))
            # The sync has reached the server and waits there (its waiter is registered
            # before it reads, so nothing sent from now on can be missed).
            await eventually(parked, interval=0.01)
            assert not started.done()
            status, _ = await raw(b, "PUT", f"{V3}/rooms/{room}/typing/{bob.user_id}", token=bob.access_token,
                                  json={"typing": on, "timeout": 10_000} if on else {"typing": False})
            assert status == 200
            resp = await asyncio.wait_for(started, 20)
            assert isinstance(resp, SyncResponse), resp
            return _typing_users(resp, room)

        assert await typing(True) == [bob.user_id]
        assert await typing(False) == []
