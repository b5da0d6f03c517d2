"""Pushers and the push sender, on both engines across two servers, against a push gateway
written here that checks each request's format (matrix-sygnal does not install here): one
notify per notifiable event per pusher, with the right counts, priority and tweaks; a
failing gateway is retried; rejected pushkeys are removed; bad pushers are refused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web
from nio import JoinResponse, RoomCreateResponse, RoomSendResponse

from homeserver.server import RunningServer
from tests.clients import eventually, msg, nio_user, raw, sync_until

V3 = "/_matrix/client/v3"


class Gateway:
    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.fail_next = 0
        self.reject: set[str] = set()
        self.problems: list[str] = []

    async def notify(self, request: web.Request) -> web.Response:
        body = await request.json()
        n = body.get("notification") if isinstance(body, dict) else None
        if not isinstance(n, dict) or not isinstance(n.get("devices"), list) or not n["devices"]:
            self.problems.append(f"bad body {body}")
            return web.json_response({}, status=400)
        for key in ("event_id", "room_id", "counts", "prio"):
            if key not in n:
                self.problems.append(f"missing {key}")
        for d in n["devices"]:
            if set(d) - {"app_id", "pushkey", "pushkey_ts", "data", "tweaks"} or "url" in d.get("data", {}):
                self.problems.append(f"bad device {d}")
        if self.fail_next:
            self.fail_next -= 1
            return web.json_response({"error": "busy"}, status=503)
        self.received.append(n)
        rejected = [d["pushkey"] for d in n["devices"] if d["pushkey"] in self.reject]
        return web.json_response({"rejected": rejected})


@asynccontextmanager
async def gateway() -> AsyncIterator[tuple[Gateway, str]]:
    gw = Gateway()
    app = web.Application()
    app.router.add_post("/_matrix/push/v1/notify", gw.notify)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield gw, f"http://127.0.0.1:{port}/_matrix/push/v1/notify"
    finally:
        await runner.cleanup()


def pusher(url: str, pushkey: str, **extra: Any) -> dict[str, Any]:
    return {"kind": "http", "app_id": "org.example.app", "pushkey": pushkey, "app_display_name": "App",
            "device_display_name": "Phone", "lang": "en", "data": {"url": url, **extra.pop("data", {})}, **extra}


async def test_gateway_gets_one_notify_per_notifiable_event(pair: tuple[RunningServer, RunningServer]) -> None:
    a, b = pair
    async with gateway() as (gw, url), nio_user(a, "carol") as carol, nio_user(b, "bob") as bob:
        tok = carol.access_token
        status, body = await raw(a, "POST", f"{V3}/pushers/set", token=tok, json=pusher(url, "key-full"))
        assert status == 200, body
        status, body = await raw(a, "POST", f"{V3}/pushers/set", token=tok,
                                 json=pusher(url, "key-ids", data={"format": "event_id_only"}, append=True))
        assert status == 200, body
        status, body = await raw(a, "GET", f"{V3}/pushers", token=tok)
        assert status == 200 and sorted(p["pushkey"] for p in body["pushers"]) == ["key-full", "key-ids"]
        assert all(p["data"]["url"] == url and p["kind"] == "http" for p in body["pushers"])

        created = await carol.room_create(name="Pushed", invite=[bob.user_id])
        assert isinstance(created, RoomCreateResponse), created
        room = created.room_id
        await sync_until(bob, lambda r: room in r.rooms.invite)
        assert isinstance(await bob.join(room), JoinResponse)

        first = await bob.room_send(room, "m.room.message", msg("hello"))
        assert isinstance(first, RoomSendResponse)

        async def delivered(n: int) -> None:
            async def check() -> bool:
                return len(gw.received) >= n
            await eventually(check, attempts=200, interval=0.05)
        await delivered(2)
        gw.fail_next = 1  # the next delivery fails: retried after the backoff
        await bob.room_send(room, "m.room.message", {"msgtype": "m.notice", "body": "a notice"})  # never notifies
        second = await bob.room_send(room, "m.room.message",
                                     {**msg("carol look"), "m.mentions": {"user_ids": [carol.user_id]}})
        assert isinstance(second, RoomSendResponse)
        await delivered(4)
        await asyncio.sleep(0.3)  # nothing more arrives
        assert gw.fail_next == 0  # the failed delivery was retried
        assert gw.problems == []
        by_key: dict[str, list[dict[str, Any]]] = {}
        for n in gw.received:
            by_key.setdefault(n["devices"][0]["pushkey"], []).append(n)
        assert [n["event_id"] for n in by_key["key-full"]] == [first.event_id, second.event_id]
        assert [n["event_id"] for n in by_key["key-ids"]] == [first.event_id, second.event_id]
        hello, mention = by_key["key-full"]
        # Two members: the one-to-one rule (sound) decides a plain message.
        assert hello["counts"] == {"unread": 1} and hello["type"] == "m.room.message"
        assert hello["sender"] == bob.user_id and hello["content"]["body"] == "hello"
        assert hello["room_name"] == "Pushed"
        assert mention["counts"] == {"unread": 2} and mention["prio"] == "high"
        assert mention["devices"][0]["tweaks"] == {"sound": "default", "highlight": True}
        assert mention["devices"][0]["data"] == {}
        assert "content" not in by_key["key-ids"][0] and "sender" not in by_key["key-ids"][0]
        assert by_key["key-ids"][0]["devices"][0]["data"] == {"format": "event_id_only"}

        # The gateway rejects a pushkey: that pusher is removed.
        gw.reject = {"key-ids"}
        await bob.room_send(room, "m.room.message", msg("again"))

        async def removed() -> bool:
            _, body = await raw(a, "GET", f"{V3}/pushers", token=tok)
            return [p["pushkey"] for p in body["pushers"]] == ["key-full"]
        await eventually(removed)

        # kind null removes a pusher.
        status, _ = await raw(a, "POST", f"{V3}/pushers/set", token=tok,
                              json={"kind": None, "app_id": "org.example.app", "pushkey": "key-full"})
        assert status == 200
        status, body = await raw(a, "GET", f"{V3}/pushers", token=tok)
        assert body == {"pushers": []}


async def test_bad_pushers_are_refused(pair: tuple[RunningServer, RunningServer]) -> None:
    a, _ = pair
    async with nio_user(a, "carol") as carol:
        url = "https://push.example.org/_matrix/push/v1/notify"
        for bad in (
            pusher("https://push.example.org/other", "k"),
            pusher("ftp://push.example.org/_matrix/push/v1/notify", "k"),
            pusher(url, "k", kind="email"),
            pusher(url, "k", data={"format": "full"}),
            pusher(url, "k", append="yes"),
            {**pusher(url, "k"), "data": "not an object"},
        ):
            status, body = await raw(a, "POST", f"{V3}/pushers/set", token=carol.access_token, json=bad)
            assert (status, body["errcode"]) == (400, "M_INVALID_PARAM"), bad
        status, body = await raw(a, "POST", f"{V3}/pushers/set", token=carol.access_token,
                                 json={"app_id": "x", "pushkey": "k"})
        assert (status, body["errcode"]) == (400, "M_MISSING_PARAM")
