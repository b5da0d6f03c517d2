"""Response shapes of the issue 22 endpoints against the spec's OpenAPI definitions.

Each call's status, ``errcode`` and body are checked against the operation's response
schema in the vendored copy of the spec (``tests/fixtures/matrix-spec``, matrix-org/matrix-spec
at d0ba2aa, Apache-2.0), with a small checker for the schema subset the files use."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from homeserver.server import RunningServer
from tests.clients import client_server, nio_user, raw, server_name
from tests.conftest import DatabaseFactory

V1, V3 = "/_matrix/client/v1", "/_matrix/client/v3"
SPEC = Path(__file__).parent.parent / "fixtures" / "matrix-spec" / "data" / "api" / "client-server"
TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,), "array": (list,), "string": (str,), "integer": (int,),
    "number": (int, float), "boolean": (bool,), "null": (type(None),),
}


@cache
def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _resolve(node: Any, base: Path) -> tuple[Any, Path]:
    while isinstance(node, dict) and "$ref" in node:
        target, _, pointer = node["$ref"].partition("#")
        base = (base.parent / target).resolve() if target else base
        node = _load(base)
        for part in filter(None, pointer.split("/")):
            node = node[part]
    return node, base


def _errors(value: Any, schema: Any, base: Path, where: str) -> list[str]:
    schema, base = _resolve(schema, base)
    errs: list[str] = []
    for sub in schema.get("allOf", []):
        errs += _errors(value, sub, base, where)
    for key in ("oneOf", "anyOf"):
        if key in schema and all(_errors(value, sub, base, where) for sub in schema[key]):
            errs.append(f"{where}: matches none of {key}")
    kinds = schema.get("type")
    if kinds is not None:
        kinds = kinds if isinstance(kinds, list) else [kinds]
        ok = any(isinstance(value, TYPES[k]) and not (k in ("integer", "number") and isinstance(value, bool))
                 for k in kinds)
        if not ok:
            return [*errs, f"{where}: {value!r:.80} is not {kinds}"]
    if "enum" in schema and value not in schema["enum"]:
        errs.append(f"{where}: {value!r} not in {schema['enum']}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        errs += [f"{where}: missing required {key!r}" for key in schema.get("required", []) if key not in value]
        for key, item in value.items():
            if key in props:
                errs += _errors(item, props[key], base, f"{where}.{key}")
                continue
            patterns = [s for p, s in schema.get("patternProperties", {}).items() if re.search(p, key)]
            for sub in patterns:
                errs += _errors(item, sub, base, f"{where}.{key}")
            extra = schema.get("additionalProperties")
            if not patterns and isinstance(extra, dict):
                errs += _errors(item, extra, base, f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errs += _errors(item, schema["items"], base, f"{where}[{i}]")
    return errs


def assert_shape(file: str, path: str, method: str, status: int, reply: tuple[int, Any]) -> Any:
    """The reply has ``status`` and a body matching the spec's schema for that response."""
    got, body = reply
    assert got == status, (file, path, method, reply)
    base = (SPEC / file).resolve()
    response, base = _resolve(_load(base)["paths"][path][method]["responses"][str(status)], base)
    schema = response.get("content", {}).get("application/json", {}).get("schema")
    if schema is not None:
        errs = _errors(body, schema, base, "$")
        assert not errs, (file, path, method, errs, body)
    return body


def assert_error(file: str, path: str, method: str, status: int, errcode: str, reply: tuple[int, Any]) -> None:
    body = assert_shape(file, path, method, status, reply)
    assert isinstance(body, dict) and body.get("errcode") == errcode, (path, method, reply)
    assert isinstance(body.get("error", ""), str)


async def _setup(s: RunningServer, ta: str, tb: str, bob: str) -> dict[str, str]:
    room = (await raw(s, "POST", f"{V3}/createRoom", token=ta, json={"preset": "public_chat"}))[1]["room_id"]
    assert (await raw(s, "POST", f"{V3}/join/{room}", token=tb, json={}))[0] == 200

    txn = [0]

    async def send(content: dict[str, Any], kind: str = "m.room.message") -> str:
        txn[0] += 1
        status, body = await raw(s, "PUT", f"{V3}/rooms/{room}/send/{kind}/t{txn[0]}", token=ta, json=content)
        assert status == 200, body
        return str(body["event_id"])

    root = await send({"msgtype": "m.text", "body": "root needle"})
    await send({"msgtype": "m.text", "body": "in thread", "m.relates_to": {"rel_type": "m.thread", "event_id": root}})
    await send({"msgtype": "m.text", "body": "second in thread",
                "m.relates_to": {"rel_type": "m.thread", "event_id": root}})
    await send({"m.relates_to": {"rel_type": "m.annotation", "event_id": root, "key": "👍"}}, "m.reaction")
    await send({"msgtype": "m.text", "body": "* edited", "m.new_content": {"msgtype": "m.text", "body": "edited"},
                "m.relates_to": {"rel_type": "m.replace", "event_id": root}})
    space = (await raw(s, "POST", f"{V3}/createRoom", token=ta,
                       json={"preset": "public_chat", "creation_content": {"type": "m.space"}}))[1]["room_id"]
    assert (await raw(s, "PUT", f"{V3}/rooms/{space}/state/m.space.child/{room}", token=ta,
                      json={"via": [server_name(s)], "suggested": True}))[0] == 200
    private = (await raw(s, "POST", f"{V3}/createRoom", token=ta,
                         json={"preset": "private_chat", "invite": [bob], "name": "secret"}))[1]["room_id"]
    return {"room": room, "root": root, "space": space, "private": private}


async def test_issue22_endpoints_match_the_spec(db_factory: DatabaseFactory, tmp_path: Path,
                                                test_ca: tuple[Path, Path]) -> None:
    async with client_server(db_factory, tmp_path / "hs", test_ca) as s, \
            nio_user(s, "alice") as alice, nio_user(s, "bob") as bob:
        ta, tb = alice.access_token, bob.access_token
        ids = await _setup(s, ta, tb, bob.user_id)
        room, root, space, private = ids["room"], ids["root"], ids["space"], ids["private"]
        await _relations_threads_search(s, ta, tb, room, root, private)
        await _tags_reports_filters(s, ta, tb, alice.user_id, bob.user_id, room, root)
        await _hierarchy_upgrade(s, ta, tb, alice.user_id, room, space, private)
        await _sync(s, ta, tb, room, root, private)


async def _relations_threads_search(s: RunningServer, ta: str, tb: str, room: str, root: str, private: str) -> None:
    rel = "relations.yaml"
    base = f"{V1}/rooms/{room}/relations/{root}"
    for path, url in (("/rooms/{roomId}/relations/{eventId}", base),
                      ("/rooms/{roomId}/relations/{eventId}", base + "?limit=1&dir=f"),
                      ("/rooms/{roomId}/relations/{eventId}/{relType}", base + "/m.thread"),
                      ("/rooms/{roomId}/relations/{eventId}/{relType}", base + "/m.thread?recurse=true"),
                      ("/rooms/{roomId}/relations/{eventId}/{relType}/{eventType}", base + "/m.annotation/m.reaction")):
        body = assert_shape(rel, path, "get", 200, await raw(s, "GET", url, token=ta))
        assert body["chunk"], url
    for query, depth in (("", None), ("?recurse=true", 3), ("?recurse=false", 1)):
        body = assert_shape(rel, "/rooms/{roomId}/relations/{eventId}", "get", 200,
                            await raw(s, "GET", base + query, token=ta))
        assert body.get("recursion_depth") == depth, (query, body.keys())
    paged = assert_shape(rel, "/rooms/{roomId}/relations/{eventId}", "get", 200,
                         await raw(s, "GET", base + "?limit=1", token=ta))
    assert len(paged["chunk"]) == 1 and "next_batch" in paged and "prev_batch" not in paged
    more = assert_shape(rel, "/rooms/{roomId}/relations/{eventId}", "get", 200,
                        await raw(s, "GET", f"{base}?limit=1&from={paged['next_batch']}", token=ta))
    assert more["prev_batch"] == paged["next_batch"] and more["chunk"] != paged["chunk"]
    for url, token in ((f"{V1}/rooms/{room}/relations/$missing", ta), (f"{V1}/rooms/{private}/relations/{root}", ta),
                       (f"{V1}/rooms/{private}/relations/{root}", tb), (f"{V1}/rooms/!no:example.org/relations/x", ta)):
        assert_error(rel, "/rooms/{roomId}/relations/{eventId}", "get", 404, "M_NOT_FOUND",
                     await raw(s, "GET", url, token=token))

    th = "threads_list.yaml"
    for query in ("", "?include=participated", "?limit=1"):
        body = assert_shape(th, "/rooms/{roomId}/threads", "get", 200,
                            await raw(s, "GET", f"{V1}/rooms/{room}/threads{query}", token=ta))
        assert [e["event_id"] for e in body["chunk"]] == [root]
        assert_bundled(body["chunk"][0], thread=True, replaced=True)
        assert body["chunk"][0]["unsigned"]["m.relations"]["m.thread"]["count"] == 2
    body = assert_shape(th, "/rooms/{roomId}/threads", "get", 200,
                        await raw(s, "GET", f"{V1}/rooms/{room}/threads?include=participated", token=tb))
    assert body["chunk"] == []
    assert_error(th, "/rooms/{roomId}/threads", "get", 400, "M_INVALID_PARAM",
                 await raw(s, "GET", f"{V1}/rooms/{room}/threads?from=nonsense", token=ta))
    assert_error(th, "/rooms/{roomId}/threads", "get", 403, "M_FORBIDDEN",
                 await raw(s, "GET", f"{V1}/rooms/!nowhere:example.org/threads", token=ta))

    se = "search.yaml"
    query = {"search_categories": {"room_events": {"search_term": "needle", "include_state": True,
                                                   "event_context": {"before_limit": 1, "after_limit": 1},
                                                   "groupings": {"group_by": [{"key": "room_id"}]}}}}
    body = assert_shape(se, "/search", "post", 200, await raw(s, "POST", f"{V3}/search", token=ta, json=query))
    events = body["search_categories"]["room_events"]
    assert events["results"] and events["count"] >= 1
    # Matching events come with their bundled aggregations (spec: "Aggregations of child events").
    assert_bundled(events["results"][0]["result"], thread=True, replaced=True)
    recent = {"search_categories": {"room_events": {"search_term": "thread", "order_by": "recent",
                                                    "filter": {"limit": 1}}}}
    body = assert_shape(se, "/search", "post", 200, await raw(s, "POST", f"{V3}/search", token=ta, json=recent))
    token = body["search_categories"]["room_events"]["next_batch"]
    body = assert_shape(se, "/search", "post", 200,
                        await raw(s, "POST", f"{V3}/search?next_batch={token}", token=ta, json=recent))
    assert len(body["search_categories"]["room_events"]["results"]) == 1
    for bad in ({}, {"search_categories": {"room_events": {}}},
                {"search_categories": {"room_events": {"search_term": "x", "order_by": "sideways"}}},
                {"search_categories": {"room_events": {"search_term": 5}}}):
        status, reply = await raw(s, "POST", f"{V3}/search", token=ta, json=bad)
        assert status == 400 and isinstance(reply.get("errcode"), str), (bad, status, reply)
        assert_shape(se, "/search", "post", 400, (status, reply))


async def _tags_reports_filters(s: RunningServer, ta: str, tb: str, alice: str, bob: str, room: str,
                                root: str) -> None:
    tg, tags = "tags.yaml", f"{V3}/user/{alice}/rooms/{room}/tags"
    assert_shape(tg, "/user/{userId}/rooms/{roomId}/tags/{tag}", "put", 200,
                 await raw(s, "PUT", f"{tags}/u.work", token=ta, json={"order": 0.25}))
    assert_shape(tg, "/user/{userId}/rooms/{roomId}/tags/{tag}", "put", 200,
                 await raw(s, "PUT", f"{tags}/m.favourite", token=ta, json={}))
    body = assert_shape(tg, "/user/{userId}/rooms/{roomId}/tags", "get", 200, await raw(s, "GET", tags, token=ta))
    assert body["tags"] == {"u.work": {"order": 0.25}, "m.favourite": {}}
    assert_shape(tg, "/user/{userId}/rooms/{roomId}/tags/{tag}", "delete", 200,
                 await raw(s, "DELETE", f"{tags}/u.work", token=ta))
    for method, payload in (("GET", None), ("PUT", {})):
        status, reply = await raw(s, method, tags + ("/u.x" if method == "PUT" else ""), token=tb, json=payload)
        assert (status, reply["errcode"]) == (403, "M_FORBIDDEN"), (method, reply)
    status, reply = await raw(s, "PUT", f"{tags}/u.x", token=ta, json={"order": "first"})
    assert (status, reply["errcode"]) == (400, "M_BAD_JSON")

    rc = "report_content.yaml"
    assert_shape(rc, "/rooms/{roomId}/report/{eventId}", "post", 200,
                 await raw(s, "POST", f"{V3}/rooms/{room}/report/{root}", token=tb, json={"reason": "x"}))
    assert_shape(rc, "/rooms/{roomId}/report", "post", 200,
                 await raw(s, "POST", f"{V3}/rooms/{room}/report", token=tb, json={"reason": "x"}))
    assert_error(rc, "/rooms/{roomId}/report/{eventId}", "post", 404, "M_NOT_FOUND",
                 await raw(s, "POST", f"{V3}/rooms/{room}/report/$missing", token=tb, json={}))
    assert_error(rc, "/rooms/{roomId}/report", "post", 404, "M_NOT_FOUND",
                 await raw(s, "POST", f"{V3}/rooms/!nowhere:example.org/report", token=tb, json={}))

    fl, filters = "filter.yaml", f"{V3}/user/{alice}/filter"
    made = assert_shape(fl, "/user/{userId}/filter", "post", 200, await raw(
        s, "POST", filters, token=ta, json={"room": {"timeline": {"limit": 5}}, "event_fields": ["type"]}))
    got = assert_shape(fl, "/user/{userId}/filter/{filterId}", "get", 200,
                       await raw(s, "GET", f"{filters}/{made['filter_id']}", token=ta))
    assert got == {"room": {"timeline": {"limit": 5}}, "event_fields": ["type"]}, got
    assert_error(fl, "/user/{userId}/filter/{filterId}", "get", 404, "M_NOT_FOUND",
                 await raw(s, "GET", f"{filters}/987654", token=ta))
    status, reply = await raw(s, "POST", f"{V3}/user/{bob}/filter", token=ta, json={})
    assert (status, reply["errcode"]) == (403, "M_FORBIDDEN")
    status, reply = await raw(s, "POST", filters, token=ta, json={"room": {"timeline": {"limit": "x"}}})
    assert status == 400 and reply["errcode"] in ("M_BAD_JSON", "M_INVALID_PARAM"), reply


async def _hierarchy_upgrade(s: RunningServer, ta: str, tb: str, alice: str, room: str, space: str,
                             private: str) -> None:
    hy, path = "space_hierarchy.yaml", "/rooms/{roomId}/hierarchy"
    body = assert_shape(hy, path, "get", 200, await raw(s, "GET", f"{V1}/rooms/{space}/hierarchy", token=tb))
    assert [r["room_id"] for r in body["rooms"]] == [space, room]
    assert body["rooms"][0]["room_type"] == "m.space" and "room_type" not in body["rooms"][1]
    assert [(e["type"], e["state_key"]) for e in body["rooms"][0]["children_state"]] == [("m.space.child", room)]
    body = assert_shape(hy, path, "get", 200, await raw(s, "GET", f"{V1}/rooms/{room}/hierarchy", token=tb))
    assert [(r["room_id"], r["children_state"]) for r in body["rooms"]] == [(room, [])]
    body = assert_shape(hy, path, "get", 200, await raw(s, "GET", f"{V1}/rooms/{space}/hierarchy?limit=1", token=tb))
    assert "next_batch" in body
    assert_error(hy, path, "get", 400, "M_INVALID_PARAM",
                 await raw(s, "GET", f"{V1}/rooms/{space}/hierarchy?from=nonsense", token=tb))
    assert_error(hy, path, "get", 403, "M_FORBIDDEN",
                 await raw(s, "GET", f"{V1}/rooms/!nowhere:example.org/hierarchy", token=tb))

    up, path = "room_upgrades.yaml", "/rooms/{roomId}/upgrade"
    assert_error(up, path, "post", 403, "M_FORBIDDEN",
                 await raw(s, "POST", f"{V3}/rooms/{room}/upgrade", token=tb, json={"new_version": "11"}))
    assert_error(up, path, "post", 400, "M_UNSUPPORTED_ROOM_VERSION",
                 await raw(s, "POST", f"{V3}/rooms/{room}/upgrade", token=ta, json={"new_version": "999"}))
    status, reply = await raw(s, "POST", f"{V3}/rooms/{room}/upgrade", token=ta, json={})
    assert status == 400 and reply["errcode"] in ("M_BAD_JSON", "M_MISSING_PARAM"), reply
    new = assert_shape(up, path, "post", 200, await raw(
        s, "POST", f"{V3}/rooms/{private}/upgrade", token=ta, json={"new_version": "11"}))["replacement_room"]
    # The v12 room's creator had unlimited power; in the v11 room they keep the top level.
    status, levels = await raw(s, "GET", f"{V3}/rooms/{new}/state/m.room.power_levels/", token=ta)
    assert status == 200 and levels["users"][alice] >= 100, levels
    assert (await raw(s, "PUT", f"{V3}/rooms/{new}/state/m.room.topic/", token=ta, json={"topic": "t"}))[0] == 200


async def _sync(s: RunningServer, ta: str, tb: str, room: str, root: str, private: str) -> None:
    for token in (ta, tb):
        body = assert_shape("sync.yaml", "/sync", "get", 200, await raw(s, "GET", f"{V3}/sync", token=token))
        if token == ta:
            joined = body["rooms"]["join"][room]
            assert {"summary", "unread_notifications"} <= joined.keys()
            roots = [e for e in joined["timeline"]["events"] if e["content"].get("body") == "root needle"]
            assert roots, joined["timeline"]
            assert_bundled(roots[0], thread=True, replaced=True, in_sync=True)
    lazy = '{"room":{"state":{"lazy_load_members":true},"timeline":{"unread_thread_notifications":true}}}'
    body = assert_shape("sync.yaml", "/sync", "get", 200, await raw(s, "GET", f"{V3}/sync?filter={lazy}", token=tb))
    joined = body["rooms"]["join"][room]
    assert set(joined.get("unread_thread_notifications", {})) == {root}, joined
    assert joined["unread_thread_notifications"][root]["notification_count"] == 2
    assert joined["unread_notifications"]["notification_count"] == 1  # the main timeline's only
    assert "invite_state" in body["rooms"]["invite"][private]
    assert joined["summary"].get("m.joined_member_count") == 2


def _thread(event_schema: str) -> dict[str, Any]:
    return {"type": "object", "required": ["latest_event", "count", "current_user_participated"],
            "properties": {"latest_event": {"$ref": f"definitions/{event_schema}.yaml"},
                           "count": {"type": "integer"}, "current_user_participated": {"type": "boolean"}}}


REPLACE = {"type": "object", "required": ["event_id", "origin_server_ts", "sender"],
           "properties": {"event_id": {"type": "string"}, "origin_server_ts": {"type": "integer"},
                          "sender": {"type": "string"}}}


def assert_bundled(event: dict[str, Any], *, thread: bool, replaced: bool, in_sync: bool = False) -> None:
    """``unsigned.m.relations`` carries the spec's aggregation shapes (threading, event replacements);
    in /sync the thread's latest event is formatted like the timeline's, without ``room_id``."""
    relations = event.get("unsigned", {}).get("m.relations", {})
    base = (SPEC / "sync.yaml").resolve()
    thread_schema = _thread("client_event_without_room_id" if in_sync else "client_event")
    for key, wanted, schema in (("m.thread", thread, thread_schema), ("m.replace", replaced, REPLACE)):
        assert (key in relations) == wanted, (key, relations)
        if wanted:
            errs = _errors(relations[key], schema, base, key)
            assert not errs, (errs, relations)
