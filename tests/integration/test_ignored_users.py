"""Ignored users across two servers (issue 22): an ignored user's messages and invites
disappear for the ignoring user only, in /sync, /messages and /context."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from homeserver.server import RunningServer
from tests.clients import eventually, nio_user, raw

V3 = "/_matrix/client/v3"


async def _sync(server: RunningServer, token: str, since: str | None = None) -> dict[str, Any]:
    path = f"{V3}/sync?filter={quote(json.dumps({'room': {'timeline': {'limit': 50}}}))}"
    if since is not None:
        path += f"&since={quote(since)}"
    status, body = await raw(server, "GET", path, token=token)
    assert status == 200, body
    return dict(body)


def _bodies(body: dict[str, Any], room: str) -> list[str]:
    section = body["rooms"]["join"].get(room, {"timeline": {"events": []}})
    return [e["content"].get("body") for e in section["timeline"]["events"] if e["type"] == "m.room.message"]


async def test_ignored_users_messages_and_invites_are_hidden(pair: tuple[RunningServer, RunningServer]) -> None:
    a, b = pair
    async with nio_user(a, "alice") as alice, nio_user(a, "carol") as carol, nio_user(b, "bob") as bob:
        ta, tc, tb = alice.access_token, carol.access_token, bob.access_token
        room = (await raw(a, "POST", f"{V3}/createRoom", token=ta, json={"preset": "public_chat"}))[1]["room_id"]
        assert (await raw(a, "POST", f"{V3}/join/{room}", token=tc, json={}))[0] == 200
        assert (await raw(b, "POST", f"{V3}/join/{room}?server_name={quote(alice.user_id.split(':', 1)[1])}",
                          token=tb, json={}))[0] == 200
        assert (await raw(a, "PUT", f"{V3}/user/{alice.user_id}/account_data/m.ignored_user_list", token=ta,
                          json={"ignored_users": {bob.user_id: {}}}))[0] == 200

        status, sent = await raw(b, "PUT", f"{V3}/rooms/{room}/send/m.room.message/b1", token=tb,
                                 json={"msgtype": "m.text", "body": "from bob"})
        bob_event = sent["event_id"]
        status, sent = await raw(a, "PUT", f"{V3}/rooms/{room}/send/m.room.message/c1", token=tc,
                                 json={"msgtype": "m.text", "body": "from carol"})
        carol_event = sent["event_id"]

        # Carol sees both (once Bob's message arrived); Alice only Carol's.
        async def carol_sees_both() -> bool:
            return sorted(_bodies(await _sync(a, tc), room)) == ["from bob", "from carol"]
        await eventually(carol_sees_both)
        got = await _sync(a, ta)
        assert _bodies(got, room) == ["from carol"]
        # Bob's member event (state) still counts.
        timeline = got["rooms"]["join"][room]["timeline"]["events"]
        assert any(e["type"] == "m.room.member" and e["state_key"] == bob.user_id for e in timeline)

        status, page = await raw(a, "GET", f"{V3}/rooms/{room}/messages?dir=b&limit=20", token=ta)
        assert status == 200
        assert [e["content"]["body"] for e in page["chunk"] if e["type"] == "m.room.message"] == ["from carol"]
        status, page = await raw(a, "GET", f"{V3}/rooms/{room}/messages?dir=b&limit=20", token=tc)
        assert sorted(e["content"]["body"] for e in page["chunk"] if e["type"] == "m.room.message") == [
            "from bob", "from carol"]
        def around(ctx: dict[str, Any]) -> set[str]:
            return {e["event_id"] for e in (*ctx["events_before"], *ctx["events_after"])}
        status, ctx = await raw(a, "GET", f"{V3}/rooms/{room}/context/{carol_event}?limit=10", token=ta)
        assert status == 200
        assert bob_event not in around(ctx)
        status, ctx = await raw(a, "GET", f"{V3}/rooms/{room}/context/{carol_event}?limit=10", token=tc)
        assert bob_event in around(ctx)

        # An invite from Bob (over federation) is not shown to Alice; one to Carol is.
        other = (await raw(b, "POST", f"{V3}/createRoom", token=tb,
                           json={"invite": [alice.user_id, carol.user_id]}))[1]["room_id"]

        async def carol_invited() -> bool:
            return other in (await _sync(a, tc))["rooms"]["invite"]
        await eventually(carol_invited)
        assert other not in (await _sync(a, ta))["rooms"]["invite"]
