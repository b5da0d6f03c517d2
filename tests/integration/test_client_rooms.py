"""Rooms, messages and /sync on one server, driven by matrix-nio: create a room, send,
see it in /sync, page back with /messages, idempotent sends, long-poll wake-ups, state,
members, typing and receipts, profiles, and forbidden actions."""

from __future__ import annotations

import asyncio
from pathlib import Path

from nio import (
    JoinResponse,
    RoomContextResponse,
    RoomCreateResponse,
    RoomGetStateResponse,
    RoomMessagesResponse,
    RoomPreset,
    RoomRedactResponse,
    RoomSendResponse,
    SyncResponse,
)

from tests.clients import client_server, eventually, msg, nio_user, raw, sync_until, timeline_bodies
from tests.conftest import DatabaseFactory

V3 = "/_matrix/client/v3"
TEXT = "m.room.message"


async def test_create_send_sync_and_paginate(db_factory: DatabaseFactory, tmp_path: Path,
                                             test_ca: tuple[Path, Path]) -> None:
    async with client_server(db_factory, tmp_path / "a", test_ca) as server, \
            nio_user(server, "alice") as alice, nio_user(server, "bob") as bob:
        created = await alice.room_create(name="Lounge", topic="chat", invite=[bob.user_id])
        assert isinstance(created, RoomCreateResponse), created
        room = created.room_id
        for i in range(5):
            assert isinstance(await alice.room_send(room, TEXT, msg(f"before {i}")), RoomSendResponse)
        # Bob sees the invite in /sync, joins, and messages continue.
        await sync_until(bob, lambda r: room in r.rooms.invite)
        assert isinstance(await bob.join(room), JoinResponse)
        for i in range(5):
            await bob.room_send(room, TEXT, msg(f"after {i}"))

        # Alice's initial sync: the room with its name, a limited timeline of the newest events.
        first = await alice.sync(timeout=0, sync_filter={"room": {"timeline": {"limit": 4}}})
        assert isinstance(first, SyncResponse)
        joined = first.rooms.join[room]
        assert timeline_bodies(first, room) == ["after 1", "after 2", "after 3", "after 4"]
        assert joined.timeline.limited is True
        assert alice.rooms[room].name == "Lounge"
        assert {e.source["type"] for e in joined.state} >= {"m.room.create", "m.room.power_levels"}

        # Page back from prev_batch across Bob's join to Alice's first message.
        seen: list[str] = []
        token = joined.timeline.prev_batch
        saw_join = False
        for _ in range(20):
            page = await alice.room_messages(room, start=token, limit=3)
            assert isinstance(page, RoomMessagesResponse), page
            for e in page.chunk:
                if getattr(e, "body", None):
                    seen.append(e.body)
                if e.source["type"] == "m.room.member" and e.source["state_key"] == bob.user_id \
                        and e.source["content"]["membership"] == "join":
                    saw_join = True
            if not page.end:
                break
            token = page.end
        assert seen == ["after 0", *[f"before {i}" for i in reversed(range(5))]]
        assert saw_join
        # Forwards from the start of the room reaches the newest event in order.
        status, body = await raw(server, "GET", f"{V3}/rooms/{room}/messages?dir=f&limit=1000",
                                 token=alice.access_token)
        bodies = [e["content"].get("body") for e in body["chunk"] if e["type"] == TEXT]
        assert status == 200 and bodies == [*(f"before {i}" for i in range(5)), *(f"after {i}" for i in range(5))]
        assert body["chunk"][0]["type"] == "m.room.create" and "end" not in body

        # Incremental sync: only what is new.
        await alice.room_send(room, TEXT, msg("new"))
        nxt = await alice.sync(timeout=0, since=first.next_batch)
        assert isinstance(nxt, SyncResponse)
        assert timeline_bodies(nxt, room) == ["new"] and nxt.rooms.join[room].timeline.limited is False
        empty = await alice.sync(timeout=0, since=nxt.next_batch)
        assert isinstance(empty, SyncResponse) and room not in empty.rooms.join


async def test_idempotent_send_and_state(db_factory: DatabaseFactory, tmp_path: Path,
                                         test_ca: tuple[Path, Path]) -> None:
    async with client_server(db_factory, tmp_path / "a", test_ca) as server, nio_user(server) as alice:
        room = (await alice.room_create()).room_id  # type: ignore[union-attr]
        path = f"{V3}/rooms/{room}/send/{TEXT}/txn-1"
        results = await asyncio.gather(*(raw(server, "PUT", path, token=alice.access_token, json=msg("once"))
                                         for _ in range(5)))
        ids = {body["event_id"] for status, body in results if status == 200}
        assert len(ids) == 1 and all(status == 200 for status, _ in results)
        count = await server.services.db.fetchval(
            "SELECT COUNT(*) FROM events WHERE room_id = ? AND type = ?", room, TEXT)
        assert count == 1
        # The same txnId from another device is another message.
        status, login = await raw(server, "POST", f"{V3}/login", json={
            "type": "m.login.password", "user": alice.user_id, "password": "correct horse battery"})
        status, body = await raw(server, "PUT", path, token=login["access_token"], json=msg("again"))
        assert status == 200 and body["event_id"] not in ids
        # The sending device gets its transaction_id back in /sync (local echo matching).
        resp = await alice.sync(timeout=0)
        assert isinstance(resp, SyncResponse)
        own = [e for e in resp.rooms.join[room].timeline.events if e.event_id in ids]
        assert own and own[0].source["unsigned"]["transaction_id"] == "txn-1"

        # State: PUT then GET, with and without a state key.
        status, body = await raw(server, "PUT", f"{V3}/rooms/{room}/state/m.room.topic", token=alice.access_token,
                                 json={"topic": "hello"})
        assert status == 200 and body["event_id"].startswith("$")
        status, body = await raw(server, "GET", f"{V3}/rooms/{room}/state/m.room.topic/", token=alice.access_token)
        assert (status, body) == (200, {"topic": "hello"})
        status, body = await raw(server, "GET", f"{V3}/rooms/{room}/state/m.room.topic", token=alice.access_token)
        assert (status, body) == (200, {"topic": "hello"})
        status, body = await raw(server, "GET", f"{V3}/rooms/{room}/state/m.room.nothing", token=alice.access_token)
        assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
        state = await alice.room_get_state(room)
        assert isinstance(state, RoomGetStateResponse)
        assert any(e["type"] == "m.room.topic" for e in state.events)
        status, body = await raw(server, "GET", f"{V3}/rooms/{room}/joined_members", token=alice.access_token)
        assert status == 200 and list(body["joined"]) == [alice.user_id]
        status, body = await raw(server, "GET", f"{V3}/rooms/{room}/members", token=alice.access_token)
        assert [e["state_key"] for e in body["chunk"]] == [alice.user_id]
        status, body = await raw(server, "GET", f"{V3}/joined_rooms", token=alice.access_token)
        assert body == {"joined_rooms": [room]}
        event_id = next(iter(ids))
        status, body = await raw(server, "GET", f"{V3}/rooms/{room}/event/{event_id}", token=alice.access_token)
        assert status == 200 and body["content"]["body"] == "once"
        status, body = await raw(server, "GET", f"{V3}/rooms/{room}/event/$nope", token=alice.access_token)
        assert (status, body["errcode"]) == (404, "M_NOT_FOUND")


async def test_sync_long_poll_wakes_on_new_event(db_factory: DatabaseFactory, tmp_path: Path,
                                                 test_ca: tuple[Path, Path]) -> None:
    async with client_server(db_factory, tmp_path / "a", test_ca) as server, \
            nio_user(server) as alice, nio_user(server) as bob:
        room = (await alice.room_create(invite=[bob.user_id])).room_id  # type: ignore[union-attr]
        await bob.join(room)
        first = await bob.sync(timeout=0)
        assert isinstance(first, SyncResponse)
        notifier_waiting = server.runners[1].app  # the client application
        from homeserver.client_api import NOTIFIER
        notifier = notifier_waiting[NOTIFIER]
        # A 60 s long-poll: it must return once Alice sends, long before its timeout.
        task = asyncio.create_task(bob.sync(timeout=60_000, since=first.next_batch))
        for _ in range(200):
            if notifier.waiting:
                break
            await asyncio.sleep(0.01)
        assert notifier.waiting == 1
        await alice.room_send(room, TEXT, msg("wake up"))
        resp = await asyncio.wait_for(task, 20)
        assert isinstance(resp, SyncResponse) and timeline_bodies(resp, room) == ["wake up"]
        assert notifier.waiting == 0

        # Typing and receipts wake it too, and arrive as ephemeral events.
        task = asyncio.create_task(bob.sync(timeout=60_000, since=resp.next_batch))
        for _ in range(200):
            if notifier.waiting:
                break
            await asyncio.sleep(0.01)
        await alice.room_typing(room, True)
        resp2 = await asyncio.wait_for(task, 20)
        assert isinstance(resp2, SyncResponse)
        typing = [e for e in resp2.rooms.join[room].ephemeral if e.__class__.__name__ == "TypingNoticeEvent"]
        assert typing and typing[0].users == [alice.user_id]
        event_id = resp.rooms.join[room].timeline.events[-1].event_id
        status, _ = await raw(server, "POST", f"{V3}/rooms/{room}/receipt/m.read/{event_id}",
                              token=alice.access_token, json={})
        assert status == 200
        resp3 = await bob.sync(timeout=5000, since=resp2.next_batch)
        assert isinstance(resp3, SyncResponse)
        raw_eph = [e.source if hasattr(e, "source") else e for e in resp3.rooms.join[room].ephemeral]
        assert any(getattr(e, "receipts", None) for e in resp3.rooms.join[room].ephemeral), raw_eph
        await alice.room_typing(room, False)
        resp4 = await bob.sync(timeout=5000, since=resp3.next_batch)
        assert isinstance(resp4, SyncResponse)
        typing = [e for e in resp4.rooms.join[room].ephemeral if e.__class__.__name__ == "TypingNoticeEvent"]
        assert typing and typing[0].users == []


async def test_membership_and_forbidden_actions(db_factory: DatabaseFactory, tmp_path: Path,
                                                test_ca: tuple[Path, Path]) -> None:
    async with client_server(db_factory, tmp_path / "a", test_ca) as server, \
            nio_user(server) as alice, nio_user(server) as bob, nio_user(server) as eve:
        room = (await alice.room_create(invite=[bob.user_id])).room_id  # type: ignore[union-attr]
        await bob.join(room)
        # Eve is not invited to a private room: joining, sending and reading are forbidden.
        for method, path, body in (
            ("POST", f"{V3}/join/{room}", {}),
            ("PUT", f"{V3}/rooms/{room}/send/{TEXT}/t", msg("hi")),
            ("GET", f"{V3}/rooms/{room}/messages?dir=b", None),
            ("GET", f"{V3}/rooms/{room}/state", None),
        ):
            status, err = await raw(server, method, path, token=eve.access_token, json=body)
            assert (status, err["errcode"]) == (403, "M_FORBIDDEN"), (path, err)
        # Bob (power 0) may not kick or ban.
        status, err = await raw(server, "POST", f"{V3}/rooms/{room}/kick", token=bob.access_token,
                                json={"user_id": alice.user_id})
        assert (status, err["errcode"]) == (403, "M_FORBIDDEN")
        status, err = await raw(server, "POST", f"{V3}/rooms/{room}/kick", token=alice.access_token, json={})
        assert (status, err["errcode"]) == (400, "M_MISSING_PARAM")
        first = await bob.sync(timeout=0)
        assert isinstance(first, SyncResponse)
        # Alice kicks Bob: Bob's next sync lists the room under leave; he can read up to the kick.
        status, _ = await raw(server, "POST", f"{V3}/rooms/{room}/kick", token=alice.access_token,
                              json={"user_id": bob.user_id, "reason": "bye"})
        assert status == 200
        await alice.room_send(room, TEXT, msg("after the kick"))
        resp = await bob.sync(timeout=0, since=first.next_batch)
        assert isinstance(resp, SyncResponse) and room in resp.rooms.leave and room not in resp.rooms.join
        status, body = await raw(server, "GET", f"{V3}/rooms/{room}/messages?dir=b", token=bob.access_token)
        assert status == 200 and "after the kick" not in [e["content"].get("body") for e in body["chunk"]]
        # Ban, unban, re-invite, rejoin, leave, forget.
        for path, who in (("ban", bob), ("unban", bob)):
            status, _ = await raw(server, "POST", f"{V3}/rooms/{room}/{path}", token=alice.access_token,
                                  json={"user_id": who.user_id})
            assert status == 200
        status, _ = await raw(server, "POST", f"{V3}/rooms/{room}/invite", token=alice.access_token,
                              json={"user_id": bob.user_id})
        assert status == 200
        assert isinstance(await bob.join(room), JoinResponse)
        status, _ = await raw(server, "POST", f"{V3}/rooms/{room}/leave", token=bob.access_token, json={})
        assert status == 200
        status, _ = await raw(server, "POST", f"{V3}/rooms/{room}/forget", token=bob.access_token, json={})
        assert status == 200
        status, body = await raw(server, "GET", f"{V3}/joined_rooms", token=bob.access_token)
        assert body == {"joined_rooms": []}


async def test_profiles(db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]) -> None:
    async with client_server(db_factory, tmp_path / "a", test_ca) as server, \
            nio_user(server, "alice") as alice, nio_user(server) as bob:
        room = (await alice.room_create()).room_id  # type: ignore[union-attr]
        status, body = await raw(server, "GET", f"{V3}/profile/{alice.user_id}")
        assert (status, body) == (200, {"displayname": "alice"})
        status, _ = await raw(server, "PUT", f"{V3}/profile/{alice.user_id}/displayname",
                              token=alice.access_token, json={"displayname": "Alice A."})
        assert status == 200
        status, body = await raw(server, "GET", f"{V3}/profile/{alice.user_id}/displayname")
        assert (status, body) == (200, {"displayname": "Alice A."})
        status, body = await raw(server, "PUT", f"{V3}/profile/{alice.user_id}/displayname",
                                 token=bob.access_token, json={"displayname": "evil"})
        assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
        status, body = await raw(server, "GET", f"{V3}/profile/@nobody:{server.services.config.server_name}")
        assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
        # The new name is carried into the member event of the joined room.
        async def carried() -> bool:
            status, body = await raw(server, "GET", f"{V3}/rooms/{room}/state/m.room.member/{alice.user_id}",
                                     token=alice.access_token)
            return status == 200 and body["displayname"] == "Alice A."
        await eventually(carried)


async def test_send_and_its_txn_id_are_one_transaction(db_factory: DatabaseFactory, tmp_path: Path,
                                                       test_ca: tuple[Path, Path]) -> None:
    """A send whose txnId cannot be recorded stores no event (a fault injected in the
    database itself), so the client's retry sends it exactly once."""
    async with client_server(db_factory, tmp_path / "a", test_ca) as server, nio_user(server, "alice") as alice:
        created = await alice.room_create(name="Atomic")
        assert isinstance(created, RoomCreateResponse), created
        room = created.room_id
        db = server.services.db
        if db.engine == "sqlite":
            await db.execute("CREATE TRIGGER fail_txn BEFORE INSERT ON client_txns"
                             " BEGIN SELECT RAISE(ABORT, 'injected fault'); END")
        else:
            await db.execute("CREATE FUNCTION fail_txn() RETURNS trigger AS $$"
                             " BEGIN RAISE EXCEPTION 'injected fault'; END $$ LANGUAGE plpgsql")
            await db.execute("CREATE TRIGGER fail_txn BEFORE INSERT ON client_txns"
                             " FOR EACH ROW EXECUTE FUNCTION fail_txn()")
        path = f"{V3}/rooms/{room}/send/{TEXT}/once"
        status, body = await raw(server, "PUT", path, token=alice.access_token, json=msg("exactly once"))
        assert status == 500 and body["errcode"] == "M_UNKNOWN", (status, body)
        await db.execute("DROP TRIGGER fail_txn" + ("" if db.engine == "sqlite" else " ON client_txns"))

        async def bodies() -> list[str]:
            resp = await alice.room_messages(room, start="", limit=50)
            assert isinstance(resp, RoomMessagesResponse), resp
            return [getattr(e, "body", "") for e in resp.chunk]

        assert "exactly once" not in await bodies()
        status, first = await raw(server, "PUT", path, token=alice.access_token, json=msg("exactly once"))
        assert status == 200, first
        status, again = await raw(server, "PUT", path, token=alice.access_token, json=msg("exactly once"))
        assert status == 200 and again["event_id"] == first["event_id"]
        assert (await bodies()).count("exactly once") == 1


async def test_redact(db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]) -> None:
    async with client_server(db_factory, tmp_path / "a", test_ca) as server, \
            nio_user(server, "alice") as alice, nio_user(server, "bob") as bob:
        created = await alice.room_create(name="Redact", preset=RoomPreset.public_chat)
        assert isinstance(created, RoomCreateResponse), created
        room = created.room_id
        assert isinstance(await bob.join(room), JoinResponse)
        sent = await alice.room_send(room, TEXT, msg("regret"))
        assert isinstance(sent, RoomSendResponse), sent
        # Bob has neither the power to redact nor sent the event.
        status, body = await raw(server, "PUT", f"{V3}/rooms/{room}/redact/{sent.event_id}/b1",
                                 token=bob.access_token, json={})
        assert status == 403 and body["errcode"] == "M_FORBIDDEN", body
        redacted = await alice.room_redact(room, sent.event_id, reason="typo", tx_id="r1")
        assert isinstance(redacted, RoomRedactResponse), redacted
        status, again = await raw(server, "PUT", f"{V3}/rooms/{room}/redact/{sent.event_id}/r1",
                                  token=alice.access_token, json={"reason": "typo"})
        assert status == 200 and again["event_id"] == redacted.event_id
        status, event = await raw(server, "GET", f"{V3}/rooms/{room}/event/{redacted.event_id}",
                                  token=alice.access_token)
        assert status == 200 and event["type"] == "m.room.redaction", event
        assert event["content"]["redacts"] == sent.event_id and event["content"]["reason"] == "typo"
        status, body = await raw(server, "PUT", f"{V3}/rooms/{room}/redact/{sent.event_id}/r2",
                                 token=alice.access_token, json={"reason": 5})
        assert status == 400 and body["errcode"] == "M_BAD_JSON"


async def test_event_context(db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]) -> None:
    async with client_server(db_factory, tmp_path / "a", test_ca) as server, \
            nio_user(server, "alice") as alice, nio_user(server, "bob") as bob:
        created = await alice.room_create(name="Context", preset=RoomPreset.public_chat)
        assert isinstance(created, RoomCreateResponse), created
        room = created.room_id
        ids = []
        for i in range(10):
            sent = await alice.room_send(room, TEXT, msg(f"m{i}"))
            assert isinstance(sent, RoomSendResponse), sent
            ids.append(sent.event_id)

        # Through a real client: two before (newest first), the event, two after.
        context = await alice.room_context(room, ids[5], limit=4)
        assert isinstance(context, RoomContextResponse), context
        assert context.event.body == "m5"
        assert [e.body for e in context.events_before] == ["m4", "m3"]
        assert [e.body for e in context.events_after] == ["m6", "m7"]
        assert {e.source["type"] for e in context.state} >= {"m.room.create", "m.room.member", "m.room.name"}

        # The tokens page on from there, neither repeating nor skipping an event.
        status, page = await raw(server, "GET", f"{V3}/rooms/{room}/messages?dir=b&limit=2&from={context.start}",
                                 token=alice.access_token)
        assert status == 200 and [e["content"]["body"] for e in page["chunk"]] == ["m2", "m1"]
        status, page = await raw(server, "GET", f"{V3}/rooms/{room}/messages?dir=f&limit=2&from={context.end}",
                                 token=alice.access_token)
        assert status == 200 and [e["content"]["body"] for e in page["chunk"]] == ["m8", "m9"]

        # At the newest event nothing comes after; limit 0 gives the event alone.
        status, body = await raw(server, "GET", f"{V3}/rooms/{room}/context/{ids[9]}?limit=0",
                                 token=alice.access_token)
        assert status == 200, body
        assert body["event"]["content"]["body"] == "m9"
        assert body["events_before"] == [] and body["events_after"] == []
        status, body = await raw(server, "GET", f"{V3}/rooms/{room}/context/{ids[9]}", token=alice.access_token)
        assert status == 200 and len(body["events_before"]) == 5 and body["events_after"] == []

        # Bad input, unknown events, and a user who may not see the room.
        status, body = await raw(server, "GET", f"{V3}/rooms/{room}/context/{ids[5]}?limit=x",
                                 token=alice.access_token)
        assert status == 400 and body["errcode"] == "M_INVALID_PARAM"
        status, body = await raw(server, "GET", f"{V3}/rooms/{room}/context/$nope", token=alice.access_token)
        assert status == 404 and body["errcode"] == "M_NOT_FOUND"
        status, body = await raw(server, "GET", f"{V3}/rooms/{room}/context/{ids[5]}", token=bob.access_token)
        assert status == 403 and body["errcode"] == "M_FORBIDDEN", body
