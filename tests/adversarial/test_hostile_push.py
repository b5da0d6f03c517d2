"""Hostile input to push rules, pushers and notifications, through the client API on both
engines (helper hostile1).

- A content rule whose pattern is a pathological glob (``*a*a*a*...``) used to be turned
  into a backtracking regex: one 3 KB message took 20 s to evaluate, stalling the
  notification pass for every user. Globs are now matched in linear time (util/glob.py), so
  the message is counted at once and other users' counts keep flowing. Patterns are capped
  (256 characters each, 8192 in all per user) so one user's rules cost a bounded time.
- A ``room_member_count`` of 5000 digits made ``int`` raise while compiling that user's
  rules, and the pass then dropped the event's notifications for everyone in the room. Such
  a condition now never holds, and a user whose rules fail is skipped alone.
- Actions are capped in bytes (they are copied into every notification row); a ``from``
  beyond 64 bits was a 500 (OverflowError in the driver) and is now 400.
- A push gateway (a URL any user picks) listing another user's pushkey in ``rejected``
  removed that user's pusher. Only the pushkey sent is honoured now; a gateway that hangs or
  answers 20 MB delays nobody else. Pusher URLs whose host IDNA refuses are 400 (one was a
  500, others killed the pusher's task at each send).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from nio import AsyncClient, JoinResponse, RoomCreateResponse, RoomSendResponse

from homeserver.errors import FederationRequestError
from homeserver.server import RunningServer
from homeserver.util.glob import Glob
from tests.clients import client_server, eventually, msg, nio_user, raw
from tests.conftest import DatabaseFactory

V3 = "/_matrix/client/v3"


@pytest.fixture
async def server(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> AsyncIterator[RunningServer]:
    async with client_server(db_factory, tmp_path / "a", test_ca) as s:
        yield s


async def unread(server: RunningServer, user: AsyncClient, room: str) -> tuple[int, int]:
    status, body = await raw(server, "GET", f"{V3}/sync", token=user.access_token)
    assert status == 200, body
    got: dict[str, Any] = body["rooms"]["join"].get(room, {}).get("unread_notifications", {})
    return got.get("notification_count", 0), got.get("highlight_count", 0)


def test_glob_is_linear_on_pathological_patterns() -> None:
    body = "a" * 60_000
    started = time.monotonic()
    for pattern in ("*a*a*a*a*a*a*a*a*b", "a*a*a*a*a*a*b", "*a?a*a?a*b*", "a" + "*a" * 200 + "*b"):
        g = Glob(pattern)
        assert not g.fullmatch(body) and not g.search_words(body)
    assert time.monotonic() - started < 1.0
    # Still the spec's semantics.
    assert Glob("*a*b").fullmatch("xxAyyB") and not Glob("a*b").fullmatch("xab")
    assert Glob("c?t*dog").search_words("the cat and dog ran") and not Glob("at*dog").search_words("cat dog")
    assert Glob("*").fullmatch("") and Glob("a*").search_words("b abc") and not Glob("a*").search_words("ba")


async def test_pathological_content_rule_does_not_stall_notifications(server: RunningServer) -> None:
    async with nio_user(server) as alice, nio_user(server) as bob, nio_user(server) as carol:
        created = await alice.room_create(name="glob", invite=[bob.user_id, carol.user_id])
        assert isinstance(created, RoomCreateResponse), created
        room = created.room_id
        for u in (bob, carol):
            assert isinstance(await u.join(room), JoinResponse)
        pattern = "*a" * 12 + "*b"
        status, body = await raw(server, "PUT", f"{V3}/pushrules/global/content/evil", token=bob.access_token,
                                 json={"pattern": pattern, "actions": ["notify", {"set_tweak": "highlight"}]})
        assert status == 200, body
        started = time.monotonic()
        sent = await alice.room_send(room, "m.room.message", msg("a" * 20_000))
        assert isinstance(sent, RoomSendResponse), sent

        async def counted() -> bool:
            return await unread(server, carol, room) == (1, 0) and await unread(server, bob, room) == (1, 0)
        await eventually(counted)
        assert time.monotonic() - started < 5.0
        # The pattern still works when it matches.
        assert isinstance(await alice.room_send(room, "m.room.message", msg("a a a a a a a a a a a a b")),
                          RoomSendResponse)

        async def highlighted() -> bool:
            return await unread(server, bob, room) == (2, 1)
        await eventually(highlighted)


async def test_one_users_odd_rules_do_not_cost_others_their_notifications(server: RunningServer) -> None:
    async with nio_user(server) as alice, nio_user(server) as bob, nio_user(server) as carol:
        created = await alice.room_create(name="odd", invite=[bob.user_id, carol.user_id])
        assert isinstance(created, RoomCreateResponse), created
        room = created.room_id
        for u in (bob, carol):
            assert isinstance(await u.join(room), JoinResponse)
        rules = f"{V3}/pushrules/global/override"
        for rule_id, conditions in (("digits", [{"kind": "room_member_count", "is": "1" * 5000}]),
                                    ("unknown", [{"kind": "made_up", "x": {"y": [1]}}]),
                                    ("object", [{"kind": "event_match", "key": "content", "pattern": "*"}])):
            status, body = await raw(server, "PUT", f"{rules}/{rule_id}", token=bob.access_token,
                                     json={"conditions": conditions, "actions": ["notify"]})
            assert status == 200, body
        assert isinstance(await alice.room_send(room, "m.room.message", msg("hello")), RoomSendResponse)

        async def counted() -> bool:
            return await unread(server, carol, room) == (1, 0) and await unread(server, bob, room) == (1, 0)
        await eventually(counted)


async def test_rule_and_notification_bounds(server: RunningServer) -> None:
    async with nio_user(server) as bob:
        token = bob.access_token
        content = f"{V3}/pushrules/global/content"
        for body in ({"pattern": "a" * 257, "actions": ["notify"]},
                     {"pattern": "x", "actions": [{"set_tweak": "sound", "value": "a" * 5000}]},
                     {"pattern": "x", "actions": ["notify"] * 21}):
            status, got = await raw(server, "PUT", f"{content}/big", token=token, json=body)
            assert status == 400 and got["errcode"] == "M_INVALID_PARAM", got
        status, got = await raw(server, "PUT", f"{V3}/pushrules/global/override/big", token=token, json={
            "conditions": [{"kind": "event_match", "key": "content.body", "pattern": "a" * 257}], "actions": []})
        assert status == 400 and got["errcode"] == "M_INVALID_PARAM", got
        for i in range(32):  # 32 x 256 = 8192: the budget, full
            status, got = await raw(server, "PUT", f"{content}/p{i}", token=token,
                                    json={"pattern": f"{i:03d}" + "a" * 253, "actions": ["notify"]})
            assert status == 200, got
        status, got = await raw(server, "PUT", f"{content}/more", token=token, json={"pattern": "b", "actions": []})
        assert status == 400 and got["errcode"] == "M_INVALID_PARAM", got
        status, got = await raw(server, "PUT", f"{content}/p0", token=token, json={"pattern": "c", "actions": []})
        assert status == 200, got  # replacing a rule frees its share

        for value in ("99999999999999999999", "1" * 5000, "²", "-1", "abc"):
            status, got = await raw(server, "GET", f"{V3}/notifications?from={value}", token=token)
            assert status == 400 and got["errcode"] == "M_INVALID_PARAM", (value, got)
        for value in ("999999999", "-5"):
            status, got = await raw(server, "GET", f"{V3}/notifications?limit={value}", token=token)
            assert status == 200 and got["notifications"] == [], got


class EvilGateway:
    """A push gateway chosen by a hostile user: names another user's pushkey in ``rejected``,
    hangs, or answers a body of many megabytes, depending on the pushkey it is sent."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def notify(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        key = body["notification"]["devices"][0]["pushkey"]
        self.seen.append(key)
        if key == "hang":
            await asyncio.sleep(60)
        if key == "huge":
            resp = web.StreamResponse()
            await resp.prepare(request)
            await resp.write(b'{"rejected": ["' + b"a" * 1024 * 1024)
            for _ in range(20):
                await resp.write(b"a" * 1024 * 1024)
            return resp
        return web.json_response({"rejected": ["victim-key", "other"]})


@asynccontextmanager
async def serve(handler: Any) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/_matrix/push/v1/notify", handler)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/_matrix/push/v1/notify"
    finally:
        await runner.cleanup()


def pusher(url: str, pushkey: str) -> dict[str, Any]:
    return {"kind": "http", "app_id": "org.example.app", "pushkey": pushkey, "app_display_name": "App",
            "device_display_name": "Phone", "lang": "en", "data": {"url": url}, "append": True}


async def test_a_hostile_gateway_cannot_remove_or_stall_other_pushers(server: RunningServer) -> None:
    evil = EvilGateway()
    good: list[str] = []

    async def good_notify(request: web.Request) -> web.Response:
        good.append((await request.json())["notification"]["event_id"])
        return web.json_response({"rejected": []})

    async with serve(evil.notify) as evil_url, serve(good_notify) as good_url, \
            nio_user(server) as alice, nio_user(server) as carol, nio_user(server) as bob:
        for key in ("hang", "huge", "reject-other"):
            status, body = await raw(server, "POST", f"{V3}/pushers/set", token=alice.access_token,
                                     json=pusher(evil_url, key))
            assert status == 200, body
        status, body = await raw(server, "POST", f"{V3}/pushers/set", token=carol.access_token,
                                 json=pusher(good_url, "victim-key"))
        assert status == 200, body
        created = await bob.room_create(name="push", invite=[alice.user_id, carol.user_id])
        assert isinstance(created, RoomCreateResponse), created
        for u in (alice, carol):
            assert isinstance(await u.join(created.room_id), JoinResponse)
        sent = await bob.room_send(created.room_id, "m.room.message", msg("hello"))
        assert isinstance(sent, RoomSendResponse), sent

        async def delivered() -> bool:
            return sent.event_id in good and {"huge", "reject-other"} <= set(evil.seen)
        await eventually(delivered)
        # Carol's pusher is still there, and still gets the next message.
        status, body = await raw(server, "GET", f"{V3}/pushers", token=carol.access_token)
        assert status == 200 and [p["pushkey"] for p in body["pushers"]] == ["victim-key"], body
        again = await bob.room_send(created.room_id, "m.room.message", msg("again"))
        assert isinstance(again, RoomSendResponse), again

        async def delivered_again() -> bool:
            return again.event_id in good
        await eventually(delivered_again)


async def test_push_rules_account_data_is_read_only_and_readable(server: RunningServer) -> None:
    async with nio_user(server) as bob:
        path = f"{V3}/user/{bob.user_id}/account_data/m.push_rules"
        status, body = await raw(server, "PUT", path, token=bob.access_token, json={"global": {"content": [
            {"rule_id": "x", "pattern": "*a*a*a*b", "actions": ["notify"], "enabled": True, "default": False}]}})
        assert status == 405 and body["errcode"] == "M_BAD_JSON"
        status, body = await raw(server, "GET", path, token=bob.access_token)  # never changed: the defaults
        assert status == 200 and body["global"]["override"][0]["rule_id"] == ".m.rule.master", body
        status, _ = await raw(server, "PUT", f"{V3}/pushrules/global/content/k", token=bob.access_token,
                              json={"pattern": "kiwi", "actions": ["notify"]})
        assert status == 200
        status, body = await raw(server, "GET", path, token=bob.access_token)
        assert status == 200 and body["global"]["content"][0]["rule_id"] == "k", body


async def test_pusher_urls_that_cannot_be_sent_to_are_refused(server: RunningServer) -> None:
    """"xn--" made yarl raise UnicodeError while the URL was checked (500); "a..b" and a
    64-character label passed the check and then raised UnicodeError (a ValueError, not an
    aiohttp error) in every send, killing that pusher's task."""
    async with nio_user(server) as bob:
        for host in ("xn--", "a..b", "a" * 64 + ".example", "[::1"):
            status, body = await raw(server, "POST", f"{V3}/pushers/set", token=bob.access_token,
                                     json=pusher(f"http://{host}/_matrix/push/v1/notify", "k"))
            assert status == 400 and body["errcode"] == "M_INVALID_PARAM", (host, status, body)
        federation = server.services.federation_client
        for url in ("http://a..b/_matrix/push/v1/notify", "http://xn--/_matrix/push/v1/notify"):
            with pytest.raises(FederationRequestError):
                await federation.post_url_json(url, {}, timeout=2.0)
