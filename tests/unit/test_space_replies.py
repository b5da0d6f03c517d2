"""What other servers send us for spaces is cut to the spec's shapes (malformed entries
dropped, never passed on to clients), children are ordered as the spec says, and the
outbound client reads a reply that arrives in several chunks whole, within its bound."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from aiohttp import web

from homeserver.net.client import _read_at_most
from homeserver.rooms.hierarchy import ordered_children, sanitize_child
from homeserver.rooms.space_walk import parse_reply
from tests.servers import free_port

ROOM = "!space:b.example"


def child(room_id: str, ts: int, **content: Any) -> dict[str, Any]:
    return {"type": "m.space.child", "state_key": room_id, "sender": "@a:b.example", "origin_server_ts": ts,
            "content": {"via": ["b.example"], **content}}


def test_children_order_and_shape() -> None:
    kids = [child("!c:x", 1), child("!b:x", 5, order="a"), child("!a:x", 1), child("!d:x", 0, order="\x01bad"),
            child("!e:x", 9, order="a", suggested=True)]
    assert [c["state_key"] for c in ordered_children(kids, False)] == ["!b:x", "!e:x", "!d:x", "!a:x", "!c:x"]
    assert [c["state_key"] for c in ordered_children(kids, True)] == ["!e:x"]
    for bad in (child("not-a-room", 1), {**child("!a:x", 1), "origin_server_ts": "1"},
                {**child("!a:x", 1), "content": {"via": []}}, {**child("!a:x", 1), "type": "m.space.parent"},
                {**child("!a:x", 1), "content": {"via": ["not a server name!"]}}, "junk"):
        assert sanitize_child(bad) is None, bad


def test_parse_reply_drops_what_does_not_fit() -> None:
    assert parse_reply(ROOM, None) is None
    assert parse_reply(ROOM, {"room": {"room_id": "!other:b.example"}}) is None
    assert parse_reply(ROOM, {"room": "nope"}) is None
    reply = {
        "room": {"room_id": ROOM, "name": 5, "num_joined_members": True, "join_rule": "public",
                 "children_state": [child("!a:x", 1), {"junk": 1}, child("!b:x", 2)], "evil": "x"},
        "children": [{"room_id": "!a:x", "name": "A", "allowed_room_ids": ["!s:x", 3, "no"]},
                     {"room_id": "!unnamed:x", "name": "not a child"}, "junk"],
        "inaccessible_children": ["!b:x", "!not-a-child:x", 7],
    }
    parsed = parse_reply(ROOM, reply)
    assert parsed is not None
    assert parsed.summary == {"room_id": ROOM, "join_rule": "public", "num_joined_members": 0,
                              "world_readable": False, "guest_can_join": False}
    assert [c["state_key"] for c in parsed.children_state] == ["!a:x", "!b:x"]
    assert list(parsed.children) == ["!a:x"] and parsed.children["!a:x"]["allowed_room_ids"] == ["!s:x"]
    assert parsed.inaccessible == frozenset({"!b:x"})


async def test_read_at_most_reads_every_chunk() -> None:
    """A real loopback HTTP reply written in four pieces, the next only after a pause."""

    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        for _ in range(4):
            await resp.write(b"x" * 1000)
            await asyncio.sleep(0.01)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/", chunked)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/") as resp:
                assert await _read_at_most(resp.content, 10_000) == b"x" * 4000
            async with session.get(f"http://127.0.0.1:{port}/") as resp:
                assert len(await _read_at_most(resp.content, 2001)) == 2001
    finally:
        await runner.cleanup()
