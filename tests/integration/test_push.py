"""Push rules and notification counts through the client API, on both engines: a mention
from another server highlights the mentioned user only and a read receipt resets it; rules
edited through the API change what notifies; GET /notifications pages them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nio import AsyncClient, JoinResponse, RoomCreateResponse, RoomSendResponse

from homeserver.push.notify import BATCH
from homeserver.server import RunningServer
from tests.clients import client_server, eventually, msg, nio_user, raw, sync_until
from tests.conftest import DatabaseFactory

V3 = "/_matrix/client/v3"
TEXT = "m.room.message"


async def counts(server: RunningServer, user: AsyncClient, room: str, flt: str | None = None) -> dict[str, Any]:
    path = f"{V3}/sync" + (f"?filter={flt}" if flt else "")
    status, body = await raw(server, "GET", path, token=user.access_token)
    assert status == 200, body
    section: dict[str, Any] = body["rooms"]["join"].get(room, {})
    return section


async def unread(server: RunningServer, user: AsyncClient, room: str) -> tuple[int, int]:
    got = (await counts(server, user, room)).get("unread_notifications", {})
    return got.get("notification_count", 0), got.get("highlight_count", 0)


async def send(user: AsyncClient, room: str, content: dict[str, Any]) -> str:
    resp = await user.room_send(room, TEXT, content)
    assert isinstance(resp, RoomSendResponse), resp
    return resp.event_id


async def until_counts(server: RunningServer, user: AsyncClient, room: str, want: tuple[int, int]) -> None:
    async def check() -> bool:
        return await unread(server, user, room) == want
    await eventually(check)


async def test_mention_over_federation_highlights_only_the_mentioned(
    pair: tuple[RunningServer, RunningServer],
) -> None:
    a, b = pair
    async with nio_user(a, "alice") as alice, nio_user(a, "carol") as carol, nio_user(b, "bob") as bob:
        created = await alice.room_create(name="Push", invite=[bob.user_id, carol.user_id])
        assert isinstance(created, RoomCreateResponse), created
        room = created.room_id
        assert isinstance(await carol.join(room), JoinResponse)
        await sync_until(bob, lambda r: room in r.rooms.invite)
        assert isinstance(await bob.join(room), JoinResponse)
        await send(bob, room, msg("hello all"))
        await until_counts(a, carol, room, (1, 0))
        await until_counts(a, alice, room, (1, 0))

        mention = await send(bob, room, {**msg("carol: look"), "m.mentions": {"user_ids": [carol.user_id]}})
        await until_counts(a, carol, room, (2, 1))
        await until_counts(a, alice, room, (2, 0))
        assert await unread(b, bob, room) == (0, 0)  # the sender is never notified

        # GET /notifications: newest first, only=highlight, paging with next_token.
        status, body = await raw(a, "GET", f"{V3}/notifications?only=highlight", token=carol.access_token)
        assert status == 200, body
        assert [n["event"]["event_id"] for n in body["notifications"]] == [mention]
        assert body["notifications"][0]["read"] is False and body["notifications"][0]["room_id"] == room
        status, body = await raw(a, "GET", f"{V3}/notifications?limit=1", token=carol.access_token)
        assert status == 200 and len(body["notifications"]) == 1 and "next_token" in body
        status, page2 = await raw(a, "GET", f"{V3}/notifications?limit=1&from={body['next_token']}",
                                  token=carol.access_token)
        assert status == 200 and page2["notifications"][0]["event"]["content"]["body"] == "hello all"

        # A read receipt resets Carol's counts, not Alice's; a private one resets Alice's.
        status, _ = await raw(a, "POST", f"{V3}/rooms/{room}/receipt/m.read/{mention}", token=carol.access_token,
                              json={})
        assert status == 200
        assert await unread(a, carol, room) == (0, 0)
        assert await unread(a, alice, room) == (2, 0)
        status, _ = await raw(a, "POST", f"{V3}/rooms/{room}/receipt/m.read.private/{mention}",
                              token=alice.access_token, json={})
        assert status == 200
        assert await unread(a, alice, room) == (0, 0)


async def test_threaded_counts_and_receipts(pair: tuple[RunningServer, RunningServer]) -> None:
    a, _ = pair
    async with nio_user(a, "alice") as alice, nio_user(a, "carol") as carol:
        created = await alice.room_create(name="Threads", invite=[carol.user_id])
        assert isinstance(created, RoomCreateResponse), created
        room = created.room_id
        assert isinstance(await carol.join(room), JoinResponse)
        root = await send(alice, room, msg("root"))
        in_thread = {"rel_type": "m.thread", "event_id": root}
        reply = await send(alice, room, {**msg("in thread"), "m.relates_to": in_thread})
        await until_counts(a, carol, room, (2, 0))
        flt = '{"room":{"timeline":{"unread_thread_notifications":true}}}'
        section = await counts(a, carol, room, flt)
        assert section["unread_notifications"] == {"notification_count": 1, "highlight_count": 0}
        assert section["unread_thread_notifications"] == {root: {"notification_count": 1, "highlight_count": 0}}
        # A receipt in the thread clears the thread only.
        status, _ = await raw(a, "POST", f"{V3}/rooms/{room}/receipt/m.read/{reply}", token=carol.access_token,
                              json={"thread_id": root})
        assert status == 200
        section = await counts(a, carol, room, flt)
        assert "unread_thread_notifications" not in section
        assert section["unread_notifications"]["notification_count"] == 1


async def test_rules_edited_through_the_api_change_what_notifies(pair: tuple[RunningServer, RunningServer]) -> None:
    a, _ = pair
    async with nio_user(a, "alice") as alice, nio_user(a, "carol") as carol:
        created = await alice.room_create(name="Rules", invite=[carol.user_id])
        assert isinstance(created, RoomCreateResponse), created
        room = created.room_id
        assert isinstance(await carol.join(room), JoinResponse)
        tok = carol.access_token
        rules = f"{V3}/pushrules/global"

        # A content rule that highlights "cake".
        status, body = await raw(a, "PUT", f"{rules}/content/cake", token=tok,
                                 json={"pattern": "cake", "actions": ["notify", {"set_tweak": "highlight"}]})
        assert status == 200, body
        status, body = await raw(a, "GET", f"{rules}/content/cake", token=tok)
        assert (status, body["pattern"], body["default"], body["enabled"]) == (200, "cake", False, True)
        await send(alice, room, msg("there is cake"))
        await until_counts(a, carol, room, (1, 1))

        # Disable the default message rules (two members: room_one_to_one comes first):
        # plain messages stop notifying.
        for rid in (".m.rule.room_one_to_one", ".m.rule.message"):
            status, _ = await raw(a, "PUT", f"{rules}/underride/{rid}/enabled", token=tok, json={"enabled": False})
            assert status == 200
        status, body = await raw(a, "GET", f"{rules}/underride/.m.rule.message/enabled", token=tok)
        assert (status, body) == (200, {"enabled": False})
        await send(alice, room, msg("plain words"))
        await send(alice, room, msg("more cake"))
        await until_counts(a, carol, room, (2, 2))

        # A room rule muting the room (actions []): content rules still come first (spec
        # order); then its actions made to notify.
        status, _ = await raw(a, "PUT", f"{rules}/room/{room}", token=tok, json={"actions": []})
        assert status == 200
        await send(alice, room, msg("cake again"))
        await send(alice, room, msg("muted words"))
        status, _ = await raw(a, "PUT", f"{rules}/room/{room}/actions", token=tok, json={"actions": ["notify"]})
        assert status == 200
        await send(alice, room, msg("after unmute"))
        await until_counts(a, carol, room, (4, 3))

        # Ordering with before / after among the user's override rules.
        cond = [{"kind": "event_match", "key": "content.body", "pattern": "x"}]
        for rid, query in (("one", ""), ("two", "?after=one"), ("zero", "?before=one")):
            status, body = await raw(a, "PUT", f"{rules}/override/{rid}{query}", token=tok,
                                     json={"conditions": cond, "actions": []})
            assert status == 200, body
        status, body = await raw(a, "GET", f"{V3}/pushrules/", token=tok)
        override = [r["rule_id"] for r in body["global"]["override"]]
        assert override[:4] == [".m.rule.master", "zero", "one", "two"], override
        # The user's rule set reaches /sync as m.push_rules account data.
        status, sync = await raw(a, "GET", f"{V3}/sync", token=tok)
        pushrules = [e for e in sync["account_data"]["events"] if e["type"] == "m.push_rules"]
        assert len(pushrules) == 1 and pushrules[0]["content"]["global"]["override"][1]["rule_id"] == "zero"

        # Errors.
        async def err(method: str, path: str, json: Any = None) -> tuple[int, str]:
            status, body = await raw(a, method, path, token=tok, json=json)
            return status, body["errcode"]
        assert await err("PUT", f"{rules}/override/bad?before=nope", {"actions": []}) == (400, "M_UNKNOWN")
        assert await err("DELETE", f"{rules}/override/.m.rule.master") == (400, "M_INVALID_PARAM")
        assert await err("DELETE", f"{rules}/override/absent") == (404, "M_NOT_FOUND")
        assert await err("GET", f"{rules}/override/absent") == (404, "M_NOT_FOUND")
        assert await err("PUT", f"{rules}/override/x", {"actions": "notify"}) == (400, "M_INVALID_PARAM")
        assert await err("PUT", f"{rules}/override/.mine", {"actions": []}) == (400, "M_INVALID_PARAM")
        assert await err("PUT", f"{rules}/content/nopattern", {"actions": []}) == (400, "M_INVALID_PARAM")
        assert await err("PUT", f"{rules}/sideways/x", {"actions": []}) == (400, "M_INVALID_PARAM")
        assert await err("PUT", f"{V3}/pushrules/device/override/x", {"actions": []}) == (400, "M_INVALID_PARAM")
        assert await err("PUT", f"{rules}/override/absent/enabled", {"enabled": True}) == (404, "M_NOT_FOUND")
        assert await err("PUT", f"{rules}/override/one/enabled", {"enabled": "yes"}) == (400, "M_INVALID_PARAM")
        status, _ = await raw(a, "DELETE", f"{rules}/override/one", token=tok)
        assert status == 200
        assert await err("GET", f"{rules}/override/one") == (404, "M_NOT_FOUND")


async def test_redacted_events_no_longer_count(db_factory: DatabaseFactory, tmp_path: Path,
                                                test_ca: tuple[Path, Path]) -> None:
    """The spec: a redacted event does not count. Its notification goes when the redaction
    is applied (by the sender here), and the other notifications stay."""
    async with client_server(db_factory, tmp_path, test_ca) as server, \
            nio_user(server, "alice") as alice, nio_user(server, "bob") as bob:
        created = await alice.room_create(invite=[bob.user_id])
        assert isinstance(created, RoomCreateResponse), created
        room = created.room_id
        assert isinstance(await bob.join(room), JoinResponse)
        first = await send(bob, room, msg("one"))
        await send(bob, room, {**msg("alice: two"), "m.mentions": {"user_ids": [alice.user_id]}})
        await until_counts(server, alice, room, (2, 1))
        status, body = await raw(server, "PUT", f"{V3}/rooms/{room}/redact/{first}/r1", token=bob.access_token,
                                 json={"reason": "oops"})
        assert status == 200, body
        await until_counts(server, alice, room, (1, 1))
        status, body = await raw(server, "GET", f"{V3}/notifications", token=alice.access_token)
        assert status == 200, body
        assert first not in [n["event"]["event_id"] for n in body["notifications"]]
        assert len(body["notifications"]) == 1


async def test_a_backlog_is_read_back_from_the_database_in_bounded_batches(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path],
) -> None:
    """The pass stopped and its memory lost (as in a crash): started again, it evaluates the
    events committed after its cursor, read from the database BATCH at a time."""
    async with client_server(db_factory, tmp_path, test_ca) as server, \
            nio_user(server, "alice") as alice, nio_user(server, "bob") as bob:
        created = await alice.room_create(invite=[bob.user_id])
        assert isinstance(created, RoomCreateResponse), created
        room = created.room_id
        assert isinstance(await bob.join(room), JoinResponse)
        push = server.services.push
        assert push is not None
        npass = push.notifications
        await npass.flush()
        await npass.stop()
        count = BATCH + BATCH // 2
        for i in range(count):
            status, body = await raw(server, "PUT", f"{V3}/rooms/{room}/send/{TEXT}/b{i}", token=bob.access_token,
                                     json=msg(f"m{i}"))
            assert status == 200, body
        assert await unread(server, alice, room) == (0, 0)
        npass._queue.clear()  # what a crash loses
        npass._backlog, npass._cursor = True, 0
        sizes: list[int] = []
        process = npass.process

        async def recorded(batch: Any) -> None:
            sizes.append(len(batch))
            await process(batch)

        npass.process = recorded  # type: ignore[method-assign]
        npass.start()
        await npass.flush()
        assert await unread(server, alice, room) == (count, 0)
        assert max(sizes) == BATCH and sum(sizes) == count
        assert await push.store.pass_cursor() == await server.services.event_store.max_stream_ordering()
