"""Pushers (client-server "Push Notifications"): ``GET /pushers`` lists the user's,
``POST /pushers/set`` adds, replaces (same app_id and pushkey) or, with ``kind: null``,
removes one. Only ``http`` pushers: ``data.url`` must be an http(s) URL whose path is
``/_matrix/push/v1/notify`` and ``data.format``, if given, ``event_id_only``. Without
``append`` (the default) the same app_id and pushkey of other users are removed. A new
pusher is sent only notifications made after it was set (push/sender.py delivers them).

Bounds: ``MAX_PUSHERS_PER_USER``; pushkey 512 bytes, app_id 64 characters, the other strings
``MAX_ID_BYTES``; ``data`` at most ``MAX_DATA_BYTES`` as JSON.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from yarl import URL

from homeserver.client_api.common import MAX_ID_BYTES, Authenticator
from homeserver.config import ClientConfig
from homeserver.errors import MatrixError
from homeserver.http import json_response, read_json_object
from homeserver.storage.events import EventStore
from homeserver.storage.push import Pusher, PushStore
from homeserver.util.clock import SYSTEM_CLOCK, Clock

MAX_PUSHERS_PER_USER = 20
MAX_PUSHKEY_BYTES = 512
MAX_APP_ID_CHARS = 64
MAX_DATA_BYTES = 4096
NOTIFY_PATH = "/_matrix/push/v1/notify"


def _invalid(message: str) -> MatrixError:
    return MatrixError(400, "M_INVALID_PARAM", message)


def _string(body: dict[str, Any], key: str, max_bytes: int = MAX_ID_BYTES, *, optional: bool = False) -> str | None:
    value = body.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise MatrixError(400, "M_MISSING_PARAM" if value is None else "M_INVALID_PARAM", f"{key} must be a string")
    if len(value.encode()) > max_bytes:
        raise _invalid(f"{key} is too long")
    return value


def check_data(data: Any) -> dict[str, Any]:
    """An http pusher's ``data``: a notify URL and an optional ``event_id_only`` format."""
    if data is None:
        raise MatrixError(400, "M_MISSING_PARAM", "data is required for an http pusher")
    if not isinstance(data, dict):
        raise _invalid("data must be an object")
    if len(json.dumps(data)) > MAX_DATA_BYTES:
        raise _invalid("data is too large")
    url = data.get("url")
    if url is None:
        raise MatrixError(400, "M_MISSING_PARAM", "data.url is required for an http pusher")
    if not isinstance(url, str):
        raise _invalid("data.url must be a string")
    try:
        parsed = URL(url)
        host = parsed.host  # may raise for a host IDNA refuses ("xn--")
        if host:
            host.encode("idna")  # what aiohttp does when sending ("a..b", 64-character labels)
    except ValueError:  # UnicodeError included
        raise _invalid("data.url is not a URL") from None
    if parsed.scheme not in ("http", "https") or not host or parsed.path != NOTIFY_PATH:
        raise _invalid(f"data.url must be an http(s) URL to {NOTIFY_PATH}")
    if "format" in data and data["format"] != "event_id_only":
        raise _invalid("data.format must be event_id_only")
    return data


class PushersAPI:
    def __init__(
        self, config: ClientConfig, auth: Authenticator, store: PushStore, events: EventStore,
        changed: Callable[[], Awaitable[None]], *, clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.config = config
        self.auth = auth
        self.store = store
        self.events = events
        self.changed = changed  # the push sender reloads its pushers
        self.clock = clock

    def routes(self) -> list[web.RouteDef]:
        p = "/_matrix/client/v3/pushers"
        return [web.get(p, self.get), web.post(f"{p}/set", self.set)]

    async def get(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        out = []
        for p in await self.store.pushers(req.user_id):
            entry: dict[str, Any] = {
                "app_display_name": p.app_display_name, "app_id": p.app_id, "data": p.data,
                "device_display_name": p.device_display_name, "kind": p.kind, "lang": p.lang, "pushkey": p.pushkey,
            }
            if p.profile_tag is not None:
                entry["profile_tag"] = p.profile_tag
            out.append(entry)
        return json_response({"pushers": out})

    async def set(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        body = await read_json_object(request, self.config.max_body_bytes)
        pushkey = _string(body, "pushkey", MAX_PUSHKEY_BYTES)
        app_id = _string(body, "app_id", MAX_APP_ID_CHARS * 4)
        assert pushkey is not None and app_id is not None
        if len(app_id) > MAX_APP_ID_CHARS:
            raise _invalid("app_id is too long")
        if "kind" not in body:
            raise MatrixError(400, "M_MISSING_PARAM", "kind is required")
        kind = body["kind"]
        if kind is None:
            await self.store.delete_pusher(req.user_id, app_id, pushkey)
            await self.changed()
            return json_response({})
        if kind != "http":
            raise _invalid("Only http pushers are supported")
        append = body.get("append", False)
        if not isinstance(append, bool):
            raise _invalid("append must be a boolean")
        pusher = Pusher(
            req.user_id, app_id, pushkey, kind,
            _string(body, "app_display_name") or "", _string(body, "device_display_name") or "",
            _string(body, "profile_tag", optional=True), _string(body, "lang") or "",
            check_data(body.get("data")), self.clock.time_ms(), await self.events.max_stream_ordering(),
        )
        existing = await self.store.pushers(req.user_id)
        if len(existing) >= MAX_PUSHERS_PER_USER and not any(
            (p.app_id, p.pushkey) == (app_id, pushkey) for p in existing
        ):
            raise _invalid(f"At most {MAX_PUSHERS_PER_USER} pushers per user")
        await self.store.set_pusher(pusher, append=append)
        await self.changed()
        return json_response({})
