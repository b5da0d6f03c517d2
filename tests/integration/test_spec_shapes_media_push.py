"""The response shapes of the media, push-rule, notification, pusher and presence endpoints
against the spec's OpenAPI definitions (data/api/client-server/content-repo.yaml,
authed-content-repo.yaml, pushrules.yaml, notifications.yaml, pusher.yaml, presence.yaml):
one server, a table of calls with valid and typical invalid input, each checked for its
status, errcode and the required keys and types of its body. The schemas below are the
yaml's, transcribed to a small subset (required keys, types, enums, array items)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import aiohttp
from PIL import Image

from homeserver.events.event import Event
from homeserver.events.versions import ROOM_V10
from homeserver.push.sender import notify_body
from homeserver.server import RunningServer
from homeserver.storage.push import Notification, Pusher
from tests.clients import base_url, client_server, eventually, msg, nio_user, raw, server_name
from tests.conftest import DatabaseFactory

V3 = "/_matrix/client/v3"
V1M = "/_matrix/client/v1/media"
LEGACY = "/_matrix/media/v3"

# --- a schema subset: {"type": ..., "required": [...], "properties": {...}, "items": ..., "enum": [...]}
STR: dict[str, Any] = {"type": "string"}
INT: dict[str, Any] = {"type": "integer"}
BOOL: dict[str, Any] = {"type": "boolean"}
EMPTY: dict[str, Any] = {"type": "object"}
ERROR = {"type": "object", "required": ["errcode"], "properties": {"errcode": STR, "error": STR}}
RATE_LIMITED = {**ERROR, "properties": {**ERROR["properties"], "retry_after_ms": INT}}
CONDITION = {"type": "object", "required": ["kind"], "properties": {
    "kind": STR, "key": STR, "pattern": STR, "is": STR,
    "value": {"type": ["string", "integer", "boolean", "null"]}}}
RULE = {"type": "object", "required": ["actions", "default", "enabled", "rule_id"], "properties": {
    "actions": {"type": "array", "items": {"type": ["string", "object"]}}, "default": BOOL, "enabled": BOOL,
    "rule_id": STR, "conditions": {"type": "array", "items": CONDITION}, "pattern": STR}}
RULES = {"type": "array", "items": RULE}
RULESET = {"type": "object", "required": ["content", "override", "room", "sender", "underride"],
           "properties": {k: RULES for k in ("content", "override", "room", "sender", "underride")}}
CLIENT_EVENT = {"type": "object", "required": ["event_id", "type", "sender", "origin_server_ts", "content"],
                "properties": {"event_id": STR, "type": STR, "state_key": STR, "sender": STR,
                               "origin_server_ts": INT, "content": EMPTY, "unsigned": EMPTY}}
NOTIFICATIONS = {"type": "object", "required": ["notifications"], "properties": {
    "next_token": STR,
    "notifications": {"type": "array", "items": {
        "type": "object", "required": ["actions", "event", "read", "room_id", "ts"], "properties": {
            "actions": {"type": "array", "items": {"type": ["object", "string"]}}, "event": CLIENT_EVENT,
            "profile_tag": STR, "read": BOOL, "room_id": STR, "ts": INT}}}}}
PUSHERS = {"type": "object", "properties": {"pushers": {"type": "array", "items": {
    "type": "object",
    "required": ["pushkey", "kind", "app_id", "app_display_name", "device_display_name", "lang", "data"],
    "properties": {"pushkey": STR, "kind": STR, "app_id": STR, "app_display_name": STR,
                   "device_display_name": STR, "profile_tag": STR, "lang": STR,
                   "data": {"type": "object", "properties": {"url": STR, "format": STR}}}}}}}
PRESENCE = {"type": "object", "required": ["presence"], "properties": {
    "presence": {"type": "string", "enum": ["online", "offline", "unavailable"]}, "last_active_ago": INT,
    "status_msg": {"type": ["string", "null"]}, "currently_active": BOOL}}
CONTENT_URI = {"type": "object", "required": ["content_uri"], "properties": {"content_uri": STR}}
CREATE = {"type": "object", "required": ["content_uri"], "properties": {"content_uri": STR, "unused_expires_at": INT}}
CONFIG = {"type": "object", "properties": {"m.upload.size": INT}}
PREVIEW = {"type": "object", "properties": {"matrix:image:size": INT, "og:image": STR}}

TYPES = {"string": str, "integer": int, "boolean": bool, "object": dict, "array": list, "null": type(None)}


def problems(value: Any, schema: dict[str, Any], where: str = "$") -> list[str]:
    """Where ``value`` breaks ``schema`` (the subset above)."""
    types = schema.get("type")
    if types is not None:
        allowed = [types] if isinstance(types, str) else types
        ok = any(isinstance(value, TYPES[t]) and not (t == "integer" and isinstance(value, bool)) for t in allowed)
        if not ok:
            return [f"{where}: {type(value).__name__} is not {types}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{where}: {value!r} not in {schema['enum']}"]
    out: list[str] = []
    if isinstance(value, dict):
        out += [f"{where}: missing {k}" for k in schema.get("required", ()) if k not in value]
        for k, sub in schema.get("properties", {}).items():
            if k in value:
                out += problems(value[k], sub, f"{where}.{k}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            out += problems(item, schema["items"], f"{where}[{i}]")
    return out


def check(status: int, body: Any, want_status: int, schema: dict[str, Any], errcode: str | None = None,
          what: str = "") -> None:
    assert status == want_status, (what, status, body)
    found = problems(body, schema)
    assert not found, (what, found, body)
    if errcode is not None:
        assert body["errcode"] == errcode, (what, body)


def png(width: int = 64, height: int = 48) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (10, 120, 200)).save(buf, format="PNG")
    return buf.getvalue()


async def test_shapes(db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]) -> None:
    # Images over 1000 pixels are too large to thumbnail here (png() has 3072).
    extra = {"media": {"legacy_unauthenticated": True, "url_preview": {"enabled": True},
                       "max_thumbnail_source_pixels": 1000}}
    async with client_server(db_factory, tmp_path / "a", test_ca, extra) as server, \
            nio_user(server) as alice, nio_user(server) as bob:
        await media_shapes(server, alice.access_token, bob.access_token)
        await push_rule_shapes(server, alice.access_token)
        await pusher_and_notification_shapes(server, alice.access_token)
        await presence_shapes(server, alice.user_id, alice.access_token, bob.user_id)
        # After the presence checks: this puts alice and bob in a room.
        await notification_entry_shapes(server, alice.access_token, bob.access_token, bob.user_id)


async def media_shapes(server: RunningServer, tok: str, other: str) -> None:
    name = server_name(server)
    status, body = await raw(server, "POST", f"{LEGACY}/upload?filename=a.png", token=tok, data=png(),
                             headers={"Content-Type": "image/png"})
    check(status, body, 200, CONTENT_URI, what="upload")
    assert body["content_uri"].startswith(f"mxc://{name}/")
    media_id = body["content_uri"].rsplit("/", 1)[1]
    status, body = await raw(server, "POST", f"{LEGACY}/upload", data=b"x")
    check(status, body, 401, ERROR, "M_MISSING_TOKEN", "upload without token")

    status, body = await raw(server, "POST", "/_matrix/media/v1/create", token=tok)
    check(status, body, 200, CREATE, what="create")
    created = body["content_uri"].rsplit("/", 1)[1]
    put = f"{LEGACY}/upload/{name}/{created}"
    status, body = await raw(server, "PUT", put, token=other, data=b"x", headers={"Content-Type": "text/plain"})
    check(status, body, 403, ERROR, "M_FORBIDDEN", "put by another user")
    status, body = await raw(server, "PUT", put, token=tok, data=b"x", headers={"Content-Type": "text/plain"})
    check(status, body, 200, EMPTY, what="put")
    status, body = await raw(server, "PUT", put, token=tok, data=b"x", headers={"Content-Type": "text/plain"})
    check(status, body, 409, ERROR, "M_CANNOT_OVERWRITE_MEDIA", "put twice")
    status, body = await raw(server, "PUT", f"{LEGACY}/upload/{name}/nosuchmedia", token=tok, data=b"x")
    check(status, body, 404, ERROR, "M_NOT_FOUND", "put unknown")

    for prefix, token in ((V1M, tok), (LEGACY, None)):
        status, body = await raw(server, "GET", f"{prefix}/config", token=token or tok)
        check(status, body, 200, CONFIG, what=f"{prefix}/config")
        assert isinstance(body.get("m.upload.size"), int)
        status, body = await raw(server, "GET", f"{prefix}/download/{name}/nosuchmedia", token=token)
        check(status, body, 404, ERROR, "M_NOT_FOUND", f"{prefix} download unknown")
        status, body = await raw(server, "GET", f"{prefix}/download/{name}/nosuchmedia/f.txt", token=token)
        check(status, body, 404, ERROR, "M_NOT_FOUND", f"{prefix} download unknown with file name")
        thumb = f"{prefix}/thumbnail/{name}/{media_id}"
        for query, errcode in (("", "M_MISSING_PARAM"), ("?width=32", "M_MISSING_PARAM"),
                               ("?width=x&height=32", "M_INVALID_PARAM"),
                               ("?width=32&height=32&method=zoom", "M_INVALID_PARAM")):
            status, body = await raw(server, "GET", thumb + query, token=token)
            check(status, body, 400, ERROR, errcode, f"{prefix} thumbnail {query}")
        status, body = await raw(server, "GET", f"{prefix}/thumbnail/{name}/nosuchmedia?width=32&height=32",
                                 token=token)
        check(status, body, 404, ERROR, "M_NOT_FOUND", f"{prefix} thumbnail unknown")
        status, body = await raw(server, "GET", f"{prefix}/preview_url", token=tok)
        check(status, body, 400, ERROR, "M_MISSING_PARAM", f"{prefix} preview without url")
    status, body = await raw(server, "POST", f"{LEGACY}/upload", token=tok, data=b"text",
                             headers={"Content-Type": "text/plain"})
    text_id = body["content_uri"].rsplit("/", 1)[1]
    status, body = await raw(server, "GET", f"{V1M}/thumbnail/{name}/{text_id}?width=32&height=32", token=tok)
    check(status, body, 400, ERROR, what="thumbnail of text")
    status, body = await raw(server, "GET", f"{V1M}/thumbnail/{name}/{media_id}?width=32&height=32", token=tok)
    check(status, body, 413, ERROR, "M_TOO_LARGE", "thumbnail of an image over the pixel limit")
    status, body = await raw(server, "POST", f"{LEGACY}/upload", token=tok, data=png(20, 20),
                             headers={"Content-Type": "image/png"})
    small_id = body["content_uri"].rsplit("/", 1)[1]
    for prefix in (V1M, LEGACY):
        status, _ = await raw_status(server, f"{prefix}/thumbnail/{name}/{small_id}?width=32&height=32", tok)
        assert status == 200, prefix
    status, body = await raw(server, "GET", f"{V1M}/download/{name}/{media_id}?timeout_ms=soon", token=tok)
    check(status, body, 400, ERROR, "M_INVALID_PARAM", "download with a bad timeout_ms")
    status, body = await raw(server, "GET", f"{V1M}/preview_url?url=http://127.0.0.1:9/", token=tok)
    assert status in (403, 502) and not problems(body, ERROR), (status, body)
    status, body = await raw(server, "GET", f"{V1M}/download/{name}/{media_id}")
    check(status, body, 401, ERROR, "M_MISSING_TOKEN", "authenticated download without token")
    status, body = await raw(server, "GET", f"{V1M}/config")
    check(status, body, 401, ERROR, "M_MISSING_TOKEN", "config without token")


async def push_rule_shapes(server: RunningServer, tok: str) -> None:
    p = f"{V3}/pushrules"
    status, body = await raw(server, "GET", f"{p}/", token=tok)
    check(status, body, 200, {"type": "object", "required": ["global"], "properties": {"global": RULESET}})
    status, body = await raw(server, "GET", f"{p}/global/", token=tok)
    check(status, body, 200, RULESET, what="global")
    status, body = await raw(server, "GET", f"{p}/global/override/.m.rule.master", token=tok)
    check(status, body, 200, RULE, what="master")
    status, body = await raw(server, "GET", f"{p}/global/override/.m.rule.master/enabled", token=tok)
    check(status, body, 200, {"type": "object", "required": ["enabled"], "properties": {"enabled": BOOL}})
    status, body = await raw(server, "GET", f"{p}/global/override/.m.rule.master/actions", token=tok)
    check(status, body, 200, {"type": "object", "required": ["actions"],
                              "properties": {"actions": {"type": "array"}}})
    rule = f"{p}/global/content/mine"
    status, body = await raw(server, "PUT", rule, token=tok, json={"actions": ["notify"], "pattern": "cake"})
    check(status, body, 200, EMPTY, what="put rule")
    status, body = await raw(server, "GET", rule, token=tok)
    check(status, body, 200, RULE, what="get rule")
    assert body["pattern"] == "cake" and body["default"] is False and body["enabled"] is True
    for attr, value in (("enabled", False), ("actions", ["dont_notify"])):
        status, body = await raw(server, "PUT", f"{rule}/{attr}", token=tok, json={attr: value})
        check(status, body, 200, EMPTY, what=f"put {attr}")
    status, body = await raw(server, "PUT", f"{rule}/enabled", token=tok, json={"enabled": "yes"})
    check(status, body, 400, ERROR, what="put enabled not a boolean")
    status, body = await raw(server, "PUT", f"{p}/global/content/other", token=tok, json={"pattern": "x"})
    check(status, body, 400, ERROR, what="put rule without actions")
    status, body = await raw(server, "PUT", f"{p}/global/content/other?before=nosuch", token=tok,
                             json={"actions": ["notify"], "pattern": "x"})
    check(status, body, 400, ERROR, "M_UNKNOWN", "put rule before an unknown rule")  # the spec's example
    status, body = await raw(server, "PUT", f"{p}/global/nosuchkind/other", token=tok, json={"actions": []})
    check(status, body, 400, ERROR, what="bad kind")
    for method, path, payload in (("GET", f"{p}/global/content/nosuch", None),
                                  ("GET", f"{p}/global/content/nosuch/enabled", None),
                                  ("GET", f"{p}/global/content/nosuch/actions", None),
                                  ("DELETE", f"{p}/global/content/nosuch", None),
                                  ("PUT", f"{p}/global/content/nosuch/enabled", {"enabled": True}),
                                  ("PUT", f"{p}/global/content/nosuch/actions", {"actions": ["notify"]})):
        status, body = await raw(server, method, path, token=tok, json=payload)
        check(status, body, 404, ERROR, "M_NOT_FOUND", f"{method} {path}")
    status, body = await raw(server, "DELETE", rule, token=tok)
    check(status, body, 200, EMPTY, what="delete rule")
    for method, path, want in (("GET", f"{p}/global/content/x/other", 404), ("POST", f"{p}/global/content/x", 405),
                               ("POST", f"{V3}/pushers", 405), ("DELETE", f"{V3}/notifications", 405)):
        status, body = await raw(server, method, path, token=tok)
        check(status, body, want, ERROR, "M_UNRECOGNIZED", f"{method} {path}")
    status, body = await raw(server, "GET", f"{p}/", token=None)
    check(status, body, 401, ERROR, "M_MISSING_TOKEN", "pushrules without token")


async def pusher_and_notification_shapes(server: RunningServer, tok: str) -> None:
    status, body = await raw(server, "GET", f"{V3}/pushers", token=tok)
    check(status, body, 200, PUSHERS, what="no pushers")
    assert body == {"pushers": []}
    pusher = {"kind": "http", "app_id": "org.example.app", "pushkey": "k1", "app_display_name": "App",
              "device_display_name": "Phone", "lang": "en",
              "data": {"url": "http://127.0.0.1:9/_matrix/push/v1/notify", "format": "event_id_only"}}
    status, body = await raw(server, "POST", f"{V3}/pushers/set", token=tok, json=pusher)
    check(status, body, 200, EMPTY, what="set pusher")
    status, body = await raw(server, "GET", f"{V3}/pushers", token=tok)
    check(status, body, 200, PUSHERS, what="pushers")
    assert len(body["pushers"]) == 1
    for missing in ("pushkey", "app_id", "kind"):
        status, body = await raw(server, "POST", f"{V3}/pushers/set", token=tok,
                                 json={k: v for k, v in pusher.items() if k != missing})
        check(status, body, 400, ERROR, "M_MISSING_PARAM", f"pusher without {missing}")
    for data, errcode in (({}, "M_MISSING_PARAM"), (None, "M_MISSING_PARAM"), ({"url": 5}, "M_INVALID_PARAM")):
        status, body = await raw(server, "POST", f"{V3}/pushers/set", token=tok, json={**pusher, "data": data})
        check(status, body, 400, ERROR, errcode, f"http pusher with data {data}")
    status, body = await raw(server, "POST", f"{V3}/pushers/set", token=tok, json={**pusher, "kind": None})
    check(status, body, 200, EMPTY, what="delete pusher")

    status, body = await raw(server, "GET", f"{V3}/notifications", token=tok)
    check(status, body, 200, NOTIFICATIONS, what="notifications")
    status, body = await raw(server, "GET", f"{V3}/notifications?limit=1&only=highlight", token=tok)
    check(status, body, 200, NOTIFICATIONS, what="notifications filtered")
    status, body = await raw(server, "POST", f"{V3}/pushers/set", token=tok, data=b"{not json",
                             headers={"Content-Type": "application/json"})
    check(status, body, 400, ERROR, "M_NOT_JSON", "pusher not JSON")
    status, body = await raw(server, "GET", f"{V3}/notifications?limit=many", token=tok)
    check(status, body, 400, ERROR, what="notifications bad limit")
    status, body = await raw(server, "GET", f"{V3}/notifications?from=not-a-token", token=tok)
    check(status, body, 400, ERROR, what="notifications bad from")


async def presence_shapes(server: RunningServer, me: str, tok: str, stranger: str) -> None:
    path = f"{V3}/presence/{me}/status"
    status, body = await raw(server, "PUT", path, token=tok, json={"presence": "unavailable", "status_msg": "away"})
    check(status, body, 200, EMPTY, what="put presence")
    status, body = await raw(server, "GET", path, token=tok)
    check(status, body, 200, PRESENCE, what="get presence")
    assert (body["presence"], body.get("status_msg")) == ("unavailable", "away")
    status, body = await raw(server, "PUT", path, token=tok, json={"presence": "sleeping"})
    check(status, body, 400, ERROR, "M_INVALID_PARAM", "bad presence")
    status, body = await raw(server, "PUT", path, token=tok, json={})
    check(status, body, 400, ERROR, "M_MISSING_PARAM", "presence missing")
    status, body = await raw(server, "PUT", f"{V3}/presence/{stranger}/status", token=tok, json={"presence": "online"})
    check(status, body, 403, ERROR, "M_FORBIDDEN", "someone else's presence")
    status, body = await raw(server, "GET", f"{V3}/presence/{stranger}/status", token=tok)
    check(status, body, 403, ERROR, "M_FORBIDDEN", "presence of a stranger")
    name = me.split(":", 1)[1]
    status, body = await raw(server, "GET", f"{V3}/presence/@nobody:{name}/status", token=tok)
    check(status, body, 404, ERROR, "M_NOT_FOUND", "presence of nobody")


async def notification_entry_shapes(server: RunningServer, tok: str, other: str, other_id: str) -> None:
    status, body = await raw(server, "POST", f"{V3}/createRoom", token=tok, json={"invite": [other_id]})
    room_id = body["room_id"]
    status, body = await raw(server, "POST", f"{V3}/join/{room_id}", token=other, json={})
    assert status == 200, body
    status, body = await raw(server, "PUT", f"{V3}/rooms/{room_id}/send/m.room.message/t1", token=other,
                             json=msg("hello"))
    assert status == 200, body
    found: dict[str, Any] = {}

    async def notified() -> bool:
        status, body = await raw(server, "GET", f"{V3}/notifications", token=tok)
        found.update(body)
        return status == 200 and any(n["room_id"] == room_id for n in body["notifications"])

    await eventually(notified)
    check(200, found, 200, NOTIFICATIONS, what="notification entries")
    status, body = await raw(server, "GET", f"{V3}/notifications?limit=1", token=tok)
    check(status, body, 200, NOTIFICATIONS, what="notifications page")
    assert len(body["notifications"]) == 1
    status, body = await raw(server, "GET", f"{V3}/presence/{other_id}/status", token=tok)
    check(status, body, 200, PRESENCE, what="presence of a room member")


async def raw_status(server: RunningServer, path: str, token: str) -> tuple[int, bytes]:
    """A GET whose answer is not JSON (a download or thumbnail)."""
    async with aiohttp.ClientSession() as s, s.get(base_url(server) + path,
                                                   headers={"Authorization": f"Bearer {token}"}) as r:
        return r.status, await r.read()


# push-gateway/push_notifier.yaml: the body of POST /_matrix/push/v1/notify.
NOTIFY = {"type": "object", "required": ["notification"], "properties": {"notification": {
    "type": "object", "required": ["devices"], "properties": {
        "event_id": STR, "room_id": STR, "type": STR, "sender": STR, "sender_display_name": STR, "room_name": STR,
        "room_alias": STR, "user_is_target": BOOL, "prio": {"type": "string", "enum": ["high", "low"]},
        "content": EMPTY, "counts": {"type": "object", "properties": {"unread": INT, "missed_calls": INT}},
        "devices": {"type": "array", "items": {
            "type": "object", "required": ["app_id", "pushkey"], "properties": {
                "app_id": STR, "pushkey": STR, "pushkey_ts": INT,
                "data": {"type": "object", "properties": {"format": STR}}, "tweaks": EMPTY}}}}}}}


def test_push_gateway_body_shape() -> None:
    pdu = {"type": "m.room.member", "state_key": "@u:x", "room_id": "!r:x", "sender": "@s:y",
           "content": {"membership": "invite"}, "origin_server_ts": 1, "depth": 1, "prev_events": [],
           "auth_events": [], "hashes": {"sha256": "x"}, "signatures": {}}
    event = Event.from_pdu(pdu, ROOM_V10)
    loud = ["notify", {"set_tweak": "sound", "value": "default"}, {"set_tweak": "highlight"}]
    for highlight, actions, data in ((True, loud, {}), (False, ["notify"], {"format": "event_id_only"})):
        pusher = Pusher("@u:x", "app", "key", "http", "App", "Phone", None, "en",
                        {"url": "https://gw/_matrix/push/v1/notify", **data}, 5_000, 0)
        n = Notification("@u:x", event.event_id, "!r:x", 7, "main", highlight, actions, 0)
        body = notify_body(pusher, n, event, 4)
        assert not problems(body, NOTIFY), (problems(body, NOTIFY), body)
        assert body["notification"]["devices"][0]["data"] == data  # minus the url
        assert ("content" in body["notification"]) == ("user_is_target" in body["notification"]) == (data == {})
        assert body["notification"]["prio"] == ("high" if highlight else "low")
