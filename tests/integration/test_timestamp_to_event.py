"""``timestamp_to_event`` on two of our servers (real HTTPS, both engines): the local
answer in both directions, the federation endpoint with its access rule (the requesting
server must be in the room), the spec's errors for bad input, and the remote fallback: a
server that joined a room late holds nothing before its join, asks the room's other
server, fetches and checks the event it names, and answers it."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

import pytest

from homeserver.net.client import FederationRequestError
from homeserver.server import RunningServer
from tests.clients import msg, nio_user, raw, server_name

V1 = "/_matrix/client/v1"
V3 = "/_matrix/client/v3"
FED = "/_matrix/federation/v1"


async def send(server: RunningServer, token: str, room: str, body: str) -> tuple[str, int]:
    """Send a message; its event ID and origin_server_ts (distinct from the next one's)."""
    status, reply = await raw(server, "PUT", f"{V3}/rooms/{room}/send/m.room.message/{body}", token=token,
                              json=msg(body))
    assert status == 200, reply
    stored = await server.services.event_store.get_event(reply["event_id"])
    assert stored is not None
    await asyncio.sleep(0.005)  # the next event gets a later millisecond
    return reply["event_id"], stored.event.origin_server_ts


def path(room: str, **query: str) -> str:
    params = "&".join(f"{k}={v}" for k, v in query.items())
    return f"{V1}/rooms/{room}/timestamp_to_event" + (f"?{params}" if params else "")


async def test_local_answers_and_bad_input(pair: tuple[RunningServer, RunningServer]) -> None:
    a, b = pair
    async with nio_user(a, "alice") as alice, nio_user(a, "dave") as dave:
        tok = alice.access_token
        status, reply = await raw(a, "POST", f"{V3}/createRoom", token=tok, json={"preset": "private_chat"})
        room = reply["room_id"]
        sent = [await send(a, tok, room, f"m{i}") for i in range(3)]
        (e0, t0), (e1, t1), (e2, t2) = sent

        async def ask(ts: int, direction: str) -> tuple[int, Any]:
            return await raw(a, "GET", path(room, ts=str(ts), dir=direction), token=tok)

        assert await ask(t1, "f") == (200, {"event_id": e1, "origin_server_ts": t1})
        assert await ask(t1 + 1, "f") == (200, {"event_id": e2, "origin_server_ts": t2})
        assert await ask(t1 - 1, "b") == (200, {"event_id": e0, "origin_server_ts": t0})
        assert await ask(t2 + 60_000, "b") == (200, {"event_id": e2, "origin_server_ts": t2})
        # Nothing after the latest event (no other server to ask), nothing before the room.
        status, reply = await ask(t2 + 60_000, "f")
        assert (status, reply["errcode"]) == (404, "M_NOT_FOUND")
        status, reply = await ask(0, "b")
        assert (status, reply["errcode"]) == (404, "M_NOT_FOUND")

        for query, errcode in (({"dir": "f"}, "M_MISSING_PARAM"), ({"ts": "1"}, "M_MISSING_PARAM"),
                               ({"ts": "soon", "dir": "f"}, "M_INVALID_PARAM"),
                               ({"ts": "1", "dir": "x"}, "M_INVALID_PARAM"),
                               ({"ts": str(2**70), "dir": "f"}, "M_INVALID_PARAM")):
            status, reply = await raw(a, "GET", path(room, **query), token=tok)
            assert (status, reply["errcode"]) == (400, errcode), query
        status, reply = await raw(a, "GET", path(room, ts=str(t1), dir="f"), token=dave.access_token)
        assert (status, reply["errcode"]) == (403, "M_FORBIDDEN")
        status, reply = await raw(a, "GET", path(room, ts=str(t1), dir="f"))
        assert (status, reply["errcode"]) == (401, "M_MISSING_TOKEN")

        # Over federation: B is not in the room (403), then is (200); bad input; unknown room.
        client = b.services.federation_client
        fed = f"{FED}/timestamp_to_event/{quote(room, safe='')}"
        with pytest.raises(FederationRequestError) as info:
            await client.get_json(server_name(a), fed, query={"ts": str(t1), "dir": "f"})
        assert (info.value.status, info.value.errcode) == (403, "M_FORBIDDEN")
        async with nio_user(b, "bob") as bob:
            status, _ = await raw(a, "POST", f"{V3}/rooms/{room}/invite", token=tok, json={"user_id": bob.user_id})
            assert status == 200
            status, reply = await raw(b, "POST", f"{V3}/join/{room}?server_name={server_name(a)}",
                                      token=bob.access_token, json={})
            assert status == 200, reply
        reply = await client.get_json(server_name(a), fed, query={"ts": str(t1), "dir": "b"})
        assert reply == {"event_id": e1, "origin_server_ts": t1}
        for query, status_code, errcode in (
            ({"ts": "x", "dir": "b"}, 400, "M_INVALID_PARAM"), ({"dir": "b"}, 400, "M_MISSING_PARAM"),
            ({"ts": "0", "dir": "b"}, 404, "M_NOT_FOUND"),
        ):
            with pytest.raises(FederationRequestError) as info:
                await client.get_json(server_name(a), fed, query=query)
            assert (info.value.status, info.value.errcode) == (status_code, errcode), query
        with pytest.raises(FederationRequestError) as info:
            await client.get_json(server_name(a), f"{FED}/timestamp_to_event/{quote('!nope:x.invalid', safe='')}",
                                  query={"ts": "1", "dir": "f"})
        assert (info.value.status, info.value.errcode) == (404, "M_NOT_FOUND")


async def test_remote_fallback_before_our_join(pair: tuple[RunningServer, RunningServer]) -> None:
    a, b = pair
    async with nio_user(a, "alice") as alice, nio_user(b, "bob") as bob:
        status, reply = await raw(b, "POST", f"{V3}/createRoom", token=bob.access_token,
                                  json={"preset": "public_chat"})
        room = reply["room_id"]
        early, early_ts = await send(b, bob.access_token, room, "early")
        await send(b, bob.access_token, room, "later")
        status, reply = await raw(a, "POST", f"{V3}/join/{room}?server_name={server_name(b)}",
                                  token=alice.access_token, json={})
        assert status == 200, reply
        # A holds nothing of the room's timeline before its join: its own answer is none.
        lookup_found = await a.services.event_store.get_event(early)
        assert lookup_found is None
        # Forward from the early message: A's own closest event is its join, whose prev
        # event it does not hold in its timeline (a gap): B is asked and knows closer.
        local = await a.services.event_store.get_event(
            (await a.services.event_store.current_membership(room, alice.user_id))[1] or "")
        assert local is not None and local.event.origin_server_ts > early_ts
        status, reply = await raw(a, "GET", path(room, ts=str(early_ts), dir="f"), token=alice.access_token)
        assert (status, reply) == (200, {"event_id": early, "origin_server_ts": early_ts})
        # The event was fetched from B and checked: A holds it now.
        fetched = await a.services.event_store.get_event(early)
        assert fetched is not None and fetched.event.room_id == room
        # Backward: A holds no event of the room's timeline that early at all.
        status, reply = await raw(a, "GET", path(room, ts=str(early_ts), dir="b"), token=alice.access_token)
        assert (status, reply) == (200, {"event_id": early, "origin_server_ts": early_ts})
