"""What a user may not see stays out of the issue 22 endpoints, on SQLite and PostgreSQL:

- bundled aggregations (``unsigned.m.relations``): a thread's latest reply or an edit sent
  after the user left (history visibility ``joined``) was bundled whole into events they
  may still fetch; a reply by a user they ignore was bundled too;
- ``/relations``, ``/threads`` and ``/search`` (results and their context) returned the
  events of ignored users, which /sync, /messages and /context already hide; a thread's
  bundled ``count`` counted their replies.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from homeserver.server import RunningServer
from tests.clients import client_server, raw
from tests.conftest import DatabaseFactory

C = "/_matrix/client/v3"
V1 = "/_matrix/client/v1"
_txn = itertools.count()


@pytest.fixture
async def server(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> AsyncIterator[RunningServer]:
    async with client_server(db_factory, tmp_path / "s", test_ca) as srv:
        yield srv


async def _register(server: RunningServer, name: str) -> tuple[str, str]:
    status, body = await raw(server, "POST", C + "/register", json={
        "username": name, "password": "correct horse battery", "auth": {"type": "m.login.dummy"}})
    assert status == 200, body
    return body["user_id"], body["access_token"]


async def _send(server: RunningServer, token: str, room: str, content: dict[str, Any]) -> str:
    status, body = await raw(server, "PUT", f"{C}/rooms/{quote(room)}/send/m.room.message/t{next(_txn)}",
                             token=token, json=content)
    assert status == 200, body
    return str(body["event_id"])


def _reply(root: str, body: str) -> dict[str, Any]:
    return {"msgtype": "m.text", "body": body, "m.relates_to": {"rel_type": "m.thread", "event_id": root}}


async def _relations(server: RunningServer, token: str, room: str, event_id: str) -> dict[str, Any]:
    status, body = await raw(server, "GET", f"{C}/rooms/{quote(room)}/event/{quote(event_id)}", token=token)
    assert status == 200, body
    return dict(body.get("unsigned", {}).get("m.relations", {}))


async def test_bundles_hide_what_came_after_leaving(server: RunningServer) -> None:
    _, alice = await _register(server, "alice")
    _, carol = await _register(server, "carol")
    status, created = await raw(server, "POST", C + "/createRoom", token=alice, json={
        "preset": "public_chat", "initial_state": [{"type": "m.room.history_visibility", "state_key": "",
                                                     "content": {"history_visibility": "joined"}}]})
    assert status == 200, created
    room = created["room_id"]
    status, body = await raw(server, "POST", f"{C}/rooms/{quote(room)}/join", token=carol, json={})
    assert status == 200, body
    root = await _send(server, alice, room, {"msgtype": "m.text", "body": "root"})
    await _send(server, alice, room, _reply(root, "seen reply"))
    edited = await _send(server, alice, room, {"msgtype": "m.text", "body": "original"})
    status, body = await raw(server, "POST", f"{C}/rooms/{quote(room)}/leave", token=carol, json={})
    assert status == 200, body
    await _send(server, alice, room, _reply(root, "secret reply"))
    await _send(server, alice, room, {"msgtype": "m.text", "body": "* secret edit", "m.new_content": {
        "msgtype": "m.text", "body": "secret edit"}, "m.relates_to": {"rel_type": "m.replace", "event_id": edited}})

    # Alice sees the latest of each; Carol, who left, the reply she saw and no edit.
    mine = await _relations(server, alice, room, root)
    assert mine["m.thread"]["latest_event"]["content"]["body"] == "secret reply"
    assert (await _relations(server, alice, room, edited))["m.replace"]["content"]["body"] == "* secret edit"
    hers = await _relations(server, carol, room, root)
    assert hers["m.thread"]["latest_event"]["content"]["body"] == "seen reply", hers
    assert "m.replace" not in await _relations(server, carol, room, edited)
    status, page = await raw(server, "GET", f"{C}/rooms/{quote(room)}/messages?dir=b&limit=50", token=carol)
    assert status == 200, page
    assert "secret" not in str(page)


async def test_ignored_users_out_of_relations_threads_and_search(server: RunningServer) -> None:
    alice_id, alice = await _register(server, "alice")
    bob_id, bob = await _register(server, "bob")
    status, created = await raw(server, "POST", C + "/createRoom", token=alice, json={"preset": "public_chat"})
    assert status == 200, created
    room = created["room_id"]
    status, body = await raw(server, "POST", f"{C}/rooms/{quote(room)}/join", token=bob, json={})
    assert status == 200, body
    root = await _send(server, alice, room, {"msgtype": "m.text", "body": "walrus root"})
    await _send(server, alice, room, _reply(root, "walrus from alice"))
    await _send(server, bob, room, _reply(root, "walrus from bob"))
    bob_root = await _send(server, bob, room, {"msgtype": "m.text", "body": "walrus thread by bob"})
    await _send(server, bob, room, _reply(bob_root, "walrus reply by bob"))
    status, body = await raw(server, "PUT", f"{C}/user/{quote(alice_id)}/account_data/m.ignored_user_list",
                             token=alice, json={"ignored_users": {bob_id: {}}})
    assert status == 200, body

    status, rels = await raw(server, "GET", f"{V1}/rooms/{quote(room)}/relations/{quote(root)}", token=alice)
    assert status == 200, rels
    assert [e["content"]["body"] for e in rels["chunk"]] == ["walrus from alice"]
    status, threads = await raw(server, "GET", f"{V1}/rooms/{quote(room)}/threads", token=alice)
    assert status == 200, threads
    assert [e["event_id"] for e in threads["chunk"]] == [root]
    bundle = threads["chunk"][0]["unsigned"]["m.relations"]["m.thread"]
    assert bundle["latest_event"]["content"]["body"] == "walrus from alice"
    assert bundle["count"] == 1  # Bob's reply is not counted for Alice
    status, page = await raw(server, "GET", f"{C}/rooms/{quote(room)}/messages?dir=b&limit=50", token=alice)
    assert status == 200, page
    assert "walrus from bob" not in str(page) and "walrus reply by bob" not in str(page)
    for order in ("rank", "recent"):
        status, found = await raw(server, "POST", C + "/search", token=alice, json={"search_categories": {
            "room_events": {"search_term": "walrus", "order_by": order,
                            "event_context": {"before_limit": 5, "after_limit": 5}}}})
        assert status == 200, found
        results = found["search_categories"]["room_events"]["results"]
        assert results and all(r["result"]["sender"] == alice_id for r in results), results
        for r in results:
            around = r["context"]["events_before"] + r["context"]["events_after"]
            assert all(e["sender"] != bob_id for e in around), around
    # Bob, who ignores nobody, sees all of it.
    status, rels = await raw(server, "GET", f"{V1}/rooms/{quote(room)}/relations/{quote(root)}", token=bob)
    assert status == 200, rels
    assert len(rels["chunk"]) == 2
    status, threads = await raw(server, "GET", f"{V1}/rooms/{quote(room)}/threads", token=bob)
    assert status == 200, threads
    counts = {e["event_id"]: e["unsigned"]["m.relations"]["m.thread"]["count"] for e in threads["chunk"]}
    assert counts == {root: 2, bob_root: 1}
