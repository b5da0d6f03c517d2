"""/sync's summary, lazy-loaded members and filters; filters on /messages and /context;
stored filters round-trip (issue 22)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

from homeserver.server import RunningServer
from tests.clients import client_server, nio_user, raw
from tests.conftest import DatabaseFactory

V3 = "/_matrix/client/v3"


async def _sync(server: RunningServer, token: str, flt: Any = None, since: str | None = None) -> dict[str, Any]:
    query = []
    if flt is not None:
        query.append("filter=" + quote(flt if isinstance(flt, str) else json.dumps(flt)))
    if since is not None:
        query.append("since=" + quote(since))
    status, body = await raw(server, "GET", f"{V3}/sync?" + "&".join(query), token=token)
    assert status == 200, body
    return dict(body)


async def _send(server: RunningServer, token: str, room: str, body: str, txn: str, **extra: Any) -> str:
    status, reply = await raw(server, "PUT", f"{V3}/rooms/{room}/send/m.room.message/{txn}", token=token,
                              json={"msgtype": "m.text", "body": body, **extra})
    assert status == 200, reply
    return str(reply["event_id"])


def _members(section: dict[str, Any]) -> set[str]:
    return {e["state_key"] for e in section["state"]["events"] if e["type"] == "m.room.member"}


async def test_summary_lazy_members_and_filters(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    async with client_server(db_factory, tmp_path / "a", test_ca) as s, nio_user(s, "alice") as alice, \
            nio_user(s, "bob") as bob, nio_user(s, "carol") as carol, nio_user(s, "dave") as dave:
        ta, tb, tc = alice.access_token, bob.access_token, carol.access_token
        status, body = await raw(s, "POST", f"{V3}/createRoom", token=ta,
                                 json={"preset": "public_chat"})
        room = body["room_id"]
        for token in (tb, tc):
            assert (await raw(s, "POST", f"{V3}/join/{room}", token=token, json={}))[0] == 200
        assert (await raw(s, "POST", f"{V3}/rooms/{room}/invite", token=ta, json={"user_id": dave.user_id}))[0] == 200

        # Summary: counts, and heroes (in join order) for an unnamed room.
        first = await _sync(s, ta)
        summary = first["rooms"]["join"][room]["summary"]
        assert summary == {"m.joined_member_count": 3, "m.invited_member_count": 1,
                           "m.heroes": [bob.user_id, carol.user_id, dave.user_id]}

        # Lazy loading in an unnamed room: the heroes' member events come too (the spec's MUST).
        lazy = {"room": {"timeline": {"limit": 1}, "state": {"lazy_load_members": True}}}
        section = (await _sync(s, ta, lazy))["rooms"]["join"][room]
        assert section["summary"]["m.heroes"] == [bob.user_id, carol.user_id, dave.user_id]
        in_timeline = {e["state_key"] for e in section["timeline"]["events"] if e["type"] == "m.room.member"}
        assert _members(section) | in_timeline == {alice.user_id, bob.user_id, carol.user_id, dave.user_id}
        assert not _members(section) & in_timeline

        # Naming the room drops the heroes.
        assert (await raw(s, "PUT", f"{V3}/rooms/{room}/state/m.room.name", token=ta, json={"name": "Named"}))[0] == 200
        assert "m.heroes" not in (await _sync(s, ta))["rooms"]["join"][room]["summary"]

        # Lazy loading: only the timeline's senders' member events (and her own).
        await _send(s, tb, room, "from bob", "b1")
        initial = await _sync(s, ta, lazy)
        section = initial["rooms"]["join"][room]
        assert _members(section) == {alice.user_id, bob.user_id}
        assert any(e["type"] == "m.room.create" for e in section["state"]["events"])
        # Carol speaks: her member event comes with it; Bob's, already sent, does not again.
        await _send(s, tc, room, "from carol", "c1")
        await _send(s, tb, room, "bob again", "b2")
        step = await _sync(s, ta, {"room": {"timeline": {"limit": 10}, "state": {"lazy_load_members": True}}},
                           since=initial["next_batch"])
        assert _members(step["rooms"]["join"][room]) == {carol.user_id}
        # With include_redundant_members, they come again.
        redundant = {"room": {"timeline": {"limit": 10},
                              "state": {"lazy_load_members": True, "include_redundant_members": True}}}
        again = await _sync(s, ta, redundant, since=initial["next_batch"])
        assert _members(again["rooms"]["join"][room]) == {carol.user_id, bob.user_id}

        # Timeline filters: types with a wildcard, senders, contains_url; event_fields.
        await _send(s, tc, room, "a picture", "c2", url="mxc://x/pic")
        flt = {"event_fields": ["type", "sender", "content.body"],
               "room": {"timeline": {"limit": 50, "types": ["m.room.mess*"], "not_senders": [bob.user_id]},
                        "state": {"types": ["m.room.name"]}}}
        got = (await _sync(s, ta, flt))["rooms"]["join"][room]
        bodies = [(e["sender"], e["content"]["body"]) for e in got["timeline"]["events"]]
        assert bodies == [(carol.user_id, "from carol"), (carol.user_id, "a picture")]
        assert all(set(e) <= {"type", "sender", "content"} for e in got["timeline"]["events"])
        assert got["timeline"]["events"][1]["content"] == {"body": "a picture"}
        assert {e["type"] for e in got["state"]["events"]} <= {"m.room.name"}
        urls = {"room": {"timeline": {"limit": 50, "contains_url": True}}}
        got = (await _sync(s, ta, urls))["rooms"]["join"][room]
        assert [e["content"]["body"] for e in got["timeline"]["events"]] == ["a picture"]
        # room.rooms / not_rooms leave the room out.
        assert room not in (await _sync(s, ta, {"room": {"not_rooms": [room]}}))["rooms"]["join"]
        # Account data filter.
        assert (await raw(s, "PUT", f"{V3}/user/{alice.user_id}/account_data/org.example.x", token=ta,
                          json={"a": 1}))[0] == 200
        types = {e["type"] for e in (await _sync(s, ta, {"account_data": {"types": ["org.example.*"]}}))
                 ["account_data"]["events"]}
        assert types == {"org.example.x"}

        # Stored filters round-trip, and bad ones are refused.
        status, reply = await raw(s, "POST", f"{V3}/user/{alice.user_id}/filter", token=ta, json=flt)
        assert status == 200
        status, stored = await raw(s, "GET", f"{V3}/user/{alice.user_id}/filter/{reply['filter_id']}", token=ta)
        assert (status, stored) == (200, flt)
        got = (await _sync(s, ta, reply["filter_id"]))["rooms"]["join"][room]
        assert [e["content"]["body"] for e in got["timeline"]["events"]] == ["from carol", "a picture"]
        for bad in ({"room": {"timeline": {"types": "x"}}}, {"event_fields": [1]}, {"room": {"state": {"limit": "1"}}}):
            status, reply = await raw(s, "POST", f"{V3}/user/{alice.user_id}/filter", token=ta, json=bad)
            assert (status, reply["errcode"]) == (400, "M_BAD_JSON"), bad

        # /messages with a filter, and lazy-loaded members in its state.
        mflt = quote(json.dumps({"senders": [carol.user_id], "types": ["m.room.message"],
                                 "lazy_load_members": True}))
        status, page = await raw(s, "GET", f"{V3}/rooms/{room}/messages?dir=b&limit=1&filter={mflt}", token=ta)
        assert status == 200
        assert [e["content"]["body"] for e in page["chunk"]] == ["a picture"]
        assert {e["state_key"] for e in page["state"]} == {carol.user_id}
        status, page = await raw(s, "GET", f"{V3}/rooms/{room}/messages?dir=b&limit=5&filter={mflt}&from={page['end']}",
                                 token=ta)
        assert [e["content"]["body"] for e in page["chunk"]] == ["from carol"]

        # /context with a filter.
        bob_msg = await _send(s, tb, room, "bob third", "b3")
        cflt = quote(json.dumps({"not_senders": [bob.user_id], "lazy_load_members": True}))
        status, ctx = await raw(s, "GET", f"{V3}/rooms/{room}/context/{bob_msg}?limit=10&filter={cflt}", token=ta)
        assert status == 200, ctx
        assert all(e["sender"] != bob.user_id for e in ctx["events_before"])
        members = {e["state_key"] for e in ctx["state"] if e["type"] == "m.room.member"}
        assert bob.user_id in members and dave.user_id not in members
