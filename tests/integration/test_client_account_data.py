"""Capabilities, account data, read markers and push rules on one server, with matrix-nio
where it has the methods and raw HTTP elsewhere: round trips, the spec's errors, account
data in initial and incremental /sync, a long-poll woken by an account data change."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from nio import (
    PushRuleKind,
    RoomReadMarkersResponse,
    RoomSendResponse,
    SetPushRuleResponse,
    SyncResponse,
)

from homeserver.client_api import NOTIFIER
from homeserver.client_api.tokens import parse_sync_token
from homeserver.server import RunningServer
from tests.clients import client_server, nio_user, raw
from tests.conftest import DatabaseFactory

V3 = "/_matrix/client/v3"


async def _sync(server: RunningServer, token: str, since: str | None = None, timeout: int = 0) -> dict[str, Any]:
    query = f"?timeout={timeout}" + (f"&since={since}" if since else "")
    status, body = await raw(server, "GET", f"{V3}/sync{query}", token=token)
    assert status == 200, body
    assert isinstance(body, dict)
    return body


def _types(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["type"]: e["content"] for e in events}


async def _wait_for_waiter(server: RunningServer) -> None:
    notifier = server.runners[1].app[NOTIFIER]
    for _ in range(200):
        if notifier.waiting:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the long-poll never waited")


async def test_capabilities(db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]) -> None:
    async with client_server(db_factory, tmp_path / "a", test_ca) as server, nio_user(server) as alice:
        status, body = await raw(server, "GET", f"{V3}/capabilities")
        assert (status, body["errcode"]) == (401, "M_MISSING_TOKEN")
        status, body = await raw(server, "GET", f"{V3}/capabilities", token=alice.access_token)
        assert status == 200
        caps = body["capabilities"]
        assert caps["m.room_versions"] == {"default": "12",
                                           "available": {str(v): "stable" for v in range(1, 13)}}
        assert caps["m.change_password"] == {"enabled": True}
        assert caps["m.3pid_changes"] == {"enabled": False}
        assert caps["m.set_displayname"] == {"enabled": True} and caps["m.set_avatar_url"] == {"enabled": True}


async def test_account_data_round_trip_errors_and_sync(db_factory: DatabaseFactory, tmp_path: Path,
                                                       test_ca: tuple[Path, Path]) -> None:
    async with client_server(db_factory, tmp_path / "a", test_ca) as server, \
            nio_user(server) as alice, nio_user(server) as bob:
        token = alice.access_token
        room = (await alice.room_create()).room_id  # type: ignore[union-attr]
        glob = f"{V3}/user/{alice.user_id}/account_data"
        in_room = f"{V3}/user/{alice.user_id}/rooms/{room}/account_data"

        # 1. Unset: 404; set, read back, overwrite.
        status, body = await raw(server, "GET", f"{glob}/org.example.settings", token=token)
        assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
        status, body = await raw(server, "GET", f"{in_room}/m.tag", token=token)
        assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
        before = await _sync(server, token)
        assert "org.example.settings" not in _types(before["account_data"]["events"])
        assert await raw(server, "PUT", f"{glob}/org.example.settings", token=token,
                         json={"theme": "dark"}) == (200, {})
        assert await raw(server, "PUT", f"{glob}/org.example.settings", token=token,
                         json={"theme": "light", "n": 2}) == (200, {})
        assert await raw(server, "GET", f"{glob}/org.example.settings", token=token) == (
            200, {"theme": "light", "n": 2})
        tags = {"tags": {"m.favourite": {"order": 0.5}}}
        assert await raw(server, "PUT", f"{in_room}/m.tag", token=token, json=tags) == (200, {})
        assert await raw(server, "GET", f"{in_room}/m.tag", token=token) == (200, tags)
        # Room and global account data are separate namespaces.
        status, _ = await raw(server, "GET", f"{glob}/m.tag", token=token)
        assert status == 404

        # 2. Errors: another user's (403), bad bodies and room IDs (400), server types (405).
        for method, path in (("GET", f"{glob}/org.example.settings"), ("PUT", f"{glob}/x"),
                             ("GET", f"{in_room}/m.tag"), ("PUT", f"{in_room}/m.tag")):
            status, body = await raw(server, method, path, token=bob.access_token,
                                     json={} if method == "PUT" else None)
            assert (status, body["errcode"]) == (403, "M_FORBIDDEN"), (method, path)
        status, body = await raw(server, "PUT", f"{glob}/x", token=token, json=[1, 2])
        assert (status, body["errcode"]) == (400, "M_BAD_JSON")
        status, body = await raw(server, "PUT", f"{glob}/x", token=token, data=b"{nope")
        assert (status, body["errcode"]) == (400, "M_NOT_JSON")
        status, body = await raw(server, "PUT", f"{V3}/user/{alice.user_id}/rooms/notaroom/account_data/x",
                                 token=token, json={})
        assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")
        status, body = await raw(server, "PUT", f"{in_room}/m.fully_read", token=token, json={"event_id": "$x"})
        assert (status, body["errcode"]) == (405, "M_BAD_JSON")
        status, body = await raw(server, "PUT", f"{glob}/m.push_rules", token=token, json={})
        assert (status, body["errcode"]) == (405, "M_BAD_JSON")

        # 3. Initial /sync: all of it, global and per room (and the default push rules);
        # matrix-nio parses both sections.
        first = await _sync(server, token)
        assert _types(first["account_data"]["events"])["org.example.settings"] == {"theme": "light", "n": 2}
        assert "m.push_rules" in _types(first["account_data"]["events"])
        assert _types(first["rooms"]["join"][room]["account_data"]["events"]) == {"m.tag": tags}
        nio_sync = await alice.sync(timeout=0, full_state=True)
        assert isinstance(nio_sync, SyncResponse)
        assert nio_sync.rooms.join[room].account_data
        # Bob's sync shows none of Alice's.
        bob_first = await _sync(server, bob.access_token)
        assert "org.example.settings" not in _types(bob_first["account_data"]["events"])

        # 4. Incremental: nothing new, then only what changed since the token.
        empty = await _sync(server, token, first["next_batch"])
        assert empty["account_data"]["events"] == [] and room not in empty["rooms"]["join"]
        await raw(server, "PUT", f"{glob}/org.example.other", token=token, json={"v": 1})
        nxt = await _sync(server, token, first["next_batch"])
        assert _types(nxt["account_data"]["events"]) == {"org.example.other": {"v": 1}}
        assert room not in nxt["rooms"]["join"]
        new_tags = {"tags": {"u.work": {}}}
        await raw(server, "PUT", f"{in_room}/m.tag", token=token, json=new_tags)
        nxt2 = await _sync(server, token, nxt["next_batch"])
        assert nxt2["account_data"]["events"] == []
        assert _types(nxt2["rooms"]["join"][room]["account_data"]["events"]) == {"m.tag": new_tags}
        assert nxt2["rooms"]["join"][room]["timeline"]["events"] == []

        # 5. A token without the account data position (the older form) still parses and
        # gives all account data again.
        # Without the account data, device-list, to-device (and presence) parts.
        old = nxt2["next_batch"].split("_p")[0].rsplit("_", 3)[0]
        assert parse_sync_token(old).account_data == 0
        again = await _sync(server, token, old)
        assert {"org.example.settings", "org.example.other"} <= set(_types(again["account_data"]["events"]))

        # 6. A waiting long-poll wakes on a change of global, then room, account data.
        for path, content in ((f"{glob}/org.example.settings", {"theme": "blue"}),
                              (f"{in_room}/org.example.room", {"pinned": True})):
            since = (await _sync(server, token, nxt2["next_batch"]))["next_batch"]
            task = asyncio.create_task(_sync(server, token, since, timeout=60_000))
            await _wait_for_waiter(server)
            assert not task.done()
            assert await raw(server, "PUT", path, token=token, json=content) == (200, {})
            woken = await asyncio.wait_for(task, 20)
            if "/rooms/" in path:
                assert _types(woken["rooms"]["join"][room]["account_data"]["events"]) == {
                    "org.example.room": content}
            else:
                assert _types(woken["account_data"]["events"]) == {"org.example.settings": content}
            nxt2 = woken


async def test_read_markers(db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]) -> None:
    async with client_server(db_factory, tmp_path / "a", test_ca) as server, \
            nio_user(server) as alice, nio_user(server) as bob:
        room = (await alice.room_create(invite=[bob.user_id])).room_id  # type: ignore[union-attr]
        await bob.join(room)
        sent = await alice.room_send(room, "m.room.message", {"msgtype": "m.text", "body": "read me"})
        assert isinstance(sent, RoomSendResponse)
        first = await _sync(server, bob.access_token)

        # A long-poll of Bob's wakes on his read markers.
        task = asyncio.create_task(_sync(server, bob.access_token, first["next_batch"], timeout=60_000))
        await _wait_for_waiter(server)
        resp = await bob.room_read_markers(room, sent.event_id, read_event=sent.event_id)
        assert isinstance(resp, RoomReadMarkersResponse), resp
        woken = await asyncio.wait_for(task, 20)
        joined = woken["rooms"]["join"][room]
        room_data = _types(joined["account_data"]["events"])
        assert room_data.get("m.fully_read") == {"event_id": sent.event_id} or any(
            e["type"] == "m.receipt" for e in joined["ephemeral"]["events"])
        # Stored: m.fully_read as room account data, m.read as a receipt.
        status, body = await raw(server, "GET", f"{V3}/user/{bob.user_id}/rooms/{room}/account_data/m.fully_read",
                                 token=bob.access_token)
        assert (status, body) == (200, {"event_id": sent.event_id})
        rows = await server.services.db.fetchall(
            "SELECT receipt_type, user_id, event_ids FROM receipts WHERE room_id = ?", room)
        assert [(r[0], r[1]) for r in rows] == [("m.read", bob.user_id)] and sent.event_id in rows[0][2]
        after = await _sync(server, bob.access_token, first["next_batch"])
        joined = after["rooms"]["join"][room]
        assert _types(joined["account_data"]["events"]) == {"m.fully_read": {"event_id": sent.event_id}}
        receipts = [e for e in joined["ephemeral"]["events"] if e["type"] == "m.receipt"]
        assert receipts and bob.user_id in receipts[0]["content"][sent.event_id]["m.read"]
        # Alice sees Bob's m.read receipt, never his m.fully_read marker.
        alice_view = await _sync(server, alice.access_token)
        assert "m.fully_read" not in _types(alice_view["rooms"]["join"][room]["account_data"]["events"])

        # A private receipt through read_markers stays Bob's; the receipt endpoint's
        # m.fully_read sets the marker too.
        status, _ = await raw(server, "POST", f"{V3}/rooms/{room}/read_markers", token=bob.access_token,
                              json={"m.read.private": sent.event_id})
        assert status == 200
        types = await server.services.db.fetchall(
            "SELECT receipt_type FROM receipts WHERE room_id = ? ORDER BY receipt_type", room)
        assert [t[0] for t in types] == ["m.read", "m.read.private"]
        first_id = first["rooms"]["join"][room]["timeline"]["events"][0]["event_id"]
        status, _ = await raw(server, "POST", f"{V3}/rooms/{room}/receipt/m.fully_read/{first_id}",
                              token=bob.access_token, json={})
        assert status == 200
        status, body = await raw(server, "GET", f"{V3}/user/{bob.user_id}/rooms/{room}/account_data/m.fully_read",
                                 token=bob.access_token)
        assert body == {"event_id": first_id}

        # Errors: unknown event (404), not a member (403), bad body (400).
        status, body = await raw(server, "POST", f"{V3}/rooms/{room}/read_markers", token=bob.access_token,
                                 json={"m.fully_read": "$nope"})
        assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
        async with nio_user(server) as carol:
            status, body = await raw(server, "POST", f"{V3}/rooms/{room}/read_markers", token=carol.access_token,
                                     json={"m.fully_read": sent.event_id})
            assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
        status, body = await raw(server, "POST", f"{V3}/rooms/{room}/read_markers", token=bob.access_token,
                                 json={"m.read": 5})
        assert (status, body["errcode"]) == (400, "M_BAD_JSON")


async def test_push_rules_defaults_and_changes(db_factory: DatabaseFactory, tmp_path: Path,
                                             test_ca: tuple[Path, Path]) -> None:
    async with client_server(db_factory, tmp_path / "a", test_ca) as server, nio_user(server) as alice:
        token = alice.access_token
        localpart = alice.user_id[1:].split(":")[0]
        status, body = await raw(server, "GET", f"{V3}/pushrules/", token=token)
        assert status == 200
        ruleset = body["global"]
        assert set(ruleset) == {"override", "content", "room", "sender", "underride"}
        override = {r["rule_id"]: r for r in ruleset["override"]}
        assert ruleset["override"][0]["rule_id"] == ".m.rule.master"
        assert override[".m.rule.master"]["enabled"] is False
        invite = override[".m.rule.invite_for_me"]["conditions"]
        assert {"kind": "event_match", "key": "state_key", "pattern": alice.user_id} in invite
        assert ruleset["content"][0]["pattern"] == localpart
        message = next(r for r in ruleset["underride"] if r["rule_id"] == ".m.rule.message")
        assert message["actions"] == ["notify"] and message["default"] is True
        assert await raw(server, "GET", f"{V3}/pushrules/global/", token=token) == (200, ruleset)
        status, body = await raw(server, "GET", f"{V3}/pushrules/global/override/.m.rule.master", token=token)
        assert status == 200 and body["rule_id"] == ".m.rule.master"
        assert await raw(server, "GET", f"{V3}/pushrules/global/override/.m.rule.master/enabled",
                         token=token) == (200, {"enabled": False})
        assert await raw(server, "GET", f"{V3}/pushrules/global/underride/.m.rule.message/actions",
                         token=token) == (200, {"actions": ["notify"]})
        status, body = await raw(server, "GET", f"{V3}/pushrules/global/override/nope", token=token)
        assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
        status, body = await raw(server, "GET", f"{V3}/pushrules/global/sideways/x", token=token)
        assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")
        status, _ = await raw(server, "GET", f"{V3}/pushrules/")
        assert status == 401
        # Changes are kept (tests/integration/test_push.py has the rest): matrix-nio's set_pushrule
        # succeeds, a default rule can be enabled but not deleted.
        resp = await alice.set_pushrule("global", PushRuleKind.content, "cake", pattern="cake", actions=())
        assert isinstance(resp, SetPushRuleResponse), resp
        status, _ = await raw(server, "PUT", f"{V3}/pushrules/global/override/.m.rule.master/enabled",
                              token=token, json={"enabled": True})
        assert status == 200
        assert await raw(server, "GET", f"{V3}/pushrules/global/override/.m.rule.master/enabled",
                         token=token) == (200, {"enabled": True})
        status, body = await raw(server, "DELETE", f"{V3}/pushrules/global/override/.m.rule.master", token=token)
        assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")
