"""Garbage sent to the issue 22 endpoints, on SQLite and PostgreSQL: each request is
answered at once with the status and ``errcode`` expected (or 200 where the input is odd
but allowed), never a 500. One server per engine, one table of requests."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tests.clients import client_server, raw
from tests.conftest import DatabaseFactory

C = "/_matrix/client/v3"
V1 = "/_matrix/client/v1"


async def test_garbage_is_refused_cleanly(db_factory: DatabaseFactory, tmp_path: Path,
                                          test_ca: tuple[Path, Path]) -> None:
    async with client_server(db_factory, tmp_path / "s", test_ca) as server:
        users = {}
        for name in ("alice", "bob"):
            status, body = await raw(server, "POST", C + "/register", json={
                "username": name, "password": "correct horse battery", "auth": {"type": "m.login.dummy"}})
            assert status == 200, body
            users[name] = (body["user_id"], body["access_token"])
        (alice, ta), (bob, tb) = users["alice"], users["bob"]
        status, body = await raw(server, "POST", C + "/createRoom", token=ta, json={"preset": "private_chat"})
        room = quote(body["room_id"])
        status, body = await raw(server, "PUT", f"{C}/rooms/{room}/send/m.room.message/1", token=ta,
                                 json={"msgtype": "m.text", "body": "hello apple"})
        event = quote(body["event_id"])
        rel, a = f"{V1}/rooms/{room}/relations/{event}", quote(alice)
        search = C + "/search"

        def crit(**kw: Any) -> dict[str, Any]:
            return {"search_categories": {"room_events": {"search_term": "apple", **kw}}}

        cases: list[tuple[str, str, str | None, Any, int, str | None]] = [
            # Relations and threads.
            ("GET", rel + "?dir=x", ta, None, 400, "M_INVALID_PARAM"),
            ("GET", rel + "?limit=x", ta, None, 400, "M_INVALID_PARAM"),
            ("GET", rel + "?limit=-1", ta, None, 200, None),
            ("GET", rel + "?limit=999999", ta, None, 200, None),
            ("GET", rel + "?recurse=maybe", ta, None, 400, "M_INVALID_PARAM"),
            ("GET", rel + "?from=garbage", ta, None, 400, "M_INVALID_PARAM"),
            ("GET", rel + "?to=garbage", ta, None, 400, "M_INVALID_PARAM"),
            ("GET", rel + "/unknown.rel/x.type?recurse=true", ta, None, 200, None),
            ("GET", f"{V1}/rooms/{room}/relations/%24nope", ta, None, 404, "M_NOT_FOUND"),
            ("GET", rel, tb, None, 404, "M_NOT_FOUND"),  # relations.yaml lists no 403
            ("GET", f"{V1}/rooms/{room}/threads?include=x", ta, None, 400, "M_INVALID_PARAM"),
            ("GET", f"{V1}/rooms/{room}/threads?from=x", ta, None, 400, "M_INVALID_PARAM"),
            ("GET", f"{V1}/rooms/{room}/threads", tb, None, 403, "M_FORBIDDEN"),
            # Search.
            ("POST", search, ta, crit(order_by="bogus"), 400, "M_BAD_JSON"),
            ("POST", search, ta, crit(keys=["content.x"]), 400, "M_BAD_JSON"),
            ("POST", search, ta, crit(groupings={"group_by": [{"key": "bogus"}]}), 400, "M_BAD_JSON"),
            ("POST", search, ta, crit(event_context={"before_limit": -1}), 400, "M_BAD_JSON"),
            ("POST", search, ta, crit(event_context={"before_limit": 10**12, "after_limit": 10**12}), 200, None),
            ("POST", search, ta, crit(filter={"limit": 10**30}), 200, None),
            ("POST", search, ta, crit(filter={"limit": True}), 400, "M_BAD_JSON"),
            ("POST", search, ta, crit(filter="x"), 400, "M_BAD_JSON"),
            ("POST", search, ta, {"search_categories": {"room_events": {"search_term": 5}}}, 400, "M_BAD_JSON"),
            ("POST", search, ta, {"search_categories": {"room_events": {"search_term": "a" * 10_000}}},
             400, "M_BAD_JSON"),
            *(("POST", search, ta, {"search_categories": {"room_events": {"search_term": term}}}, 200, None)
              for term in ('"', "*", "NEAR(", "AND OR", "^", ":", "body:apple", "-apple", "!", "&", "|",
                           "<->", ":*", "\\", "apple'", "(", "", "日本語 🍎")),
            # Filters.
            ("POST", f"{C}/user/{a}/filter", ta, [], 400, "M_BAD_JSON"),
            ("POST", f"{C}/user/{a}/filter", ta, {"room": {"timeline": {"limit": "x"}}}, 400, "M_BAD_JSON"),
            ("POST", f"{C}/user/{a}/filter", ta, {"event_fields": [5]}, 400, "M_BAD_JSON"),
            ("POST", f"{C}/user/{a}/filter", ta, {"room": {"timeline": {"types": ["a"] * 1001}}}, 400, "M_BAD_JSON"),
            ("POST", f"{C}/user/{quote(bob)}/filter", ta, {}, 403, "M_FORBIDDEN"),
            ("GET", f"{C}/user/{a}/filter/999999", ta, None, 404, "M_NOT_FOUND"),
            ("GET", f"{C}/sync?timeout=0&filter={quote('[]')}", ta, None, 400, None),
            ("GET", f"{C}/sync?timeout=0&filter={quote('{')}", ta, None, 400, None),
            ("GET", f"{C}/sync?timeout=0&filter=999999", ta, None, 400, "M_INVALID_PARAM"),
            ("GET", f"{C}/sync?timeout=0&filter={quote(json.dumps({'event_fields': ['a' + chr(92)]}))}",
             ta, None, 200, None),
            ("GET", f"{C}/rooms/{room}/messages?dir=b&filter={quote(json.dumps({'limit': -1}))}", ta, None, 400, None),
            # Reports.
            ("POST", f"{C}/rooms/{room}/report/{event}", ta, {"score": 1000}, 400, None),
            ("POST", f"{C}/rooms/{room}/report/{event}", ta, {"score": "x"}, 400, None),
            ("POST", f"{C}/rooms/{room}/report/{event}", ta, {"reason": "x" * 5000}, 400, None),
            ("POST", f"{C}/rooms/{room}/report/{event}", tb, {"reason": "x"}, 404, "M_NOT_FOUND"),
            ("POST", f"{C}/rooms/{room}/report/%24nope", tb, {"reason": "x"}, 404, "M_NOT_FOUND"),
            # Ignored users: malformed lists are stored and read as ignoring nobody.
            ("PUT", f"{C}/user/{a}/account_data/m.ignored_user_list", ta, {"ignored_users": []}, 200, None),
            ("GET", f"{C}/sync?timeout=0", ta, None, 200, None),
            ("PUT", f"{C}/user/{a}/account_data/m.ignored_user_list", ta, {"ignored_users": {alice: {}}}, 200, None),
            ("GET", f"{C}/rooms/{room}/messages?dir=b", ta, None, 200, None),
            # Upgrades.
            ("POST", f"{C}/rooms/{room}/upgrade", ta, {"new_version": "999"}, 400, "M_UNSUPPORTED_ROOM_VERSION"),
            ("POST", f"{C}/rooms/{room}/upgrade", ta, {"new_version": 11}, 400, None),
            ("POST", f"{C}/rooms/{room}/upgrade", tb, {"new_version": "11"}, 403, "M_FORBIDDEN"),
        ]
        for method, path, token, body, want_status, want_code in cases:
            started = time.monotonic()
            status, reply = await raw(server, method, path, token=token, json=body)
            assert time.monotonic() - started < 3, path
            assert status == want_status, (method, path, body, status, reply)
            if status >= 400:
                assert isinstance(reply, dict) and reply.get("errcode"), (path, reply)
                assert want_code is None or reply["errcode"] == want_code, (path, reply)
