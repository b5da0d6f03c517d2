"""Account data (the spec's "Client Config" module).

``AccountData`` is the one way account data changes: it stores the change (a new position
in the account data stream, storage/account_data.py) and wakes the user's waiting /sync
long-polls, which then return it (sync.py). ``AccountDataAPI`` serves
``PUT/GET /user/{userId}/account_data/{type}`` and
``PUT/GET /user/{userId}/rooms/{roomId}/account_data/{type}``.

Guarantees: a user reads and writes only their own account data (M_FORBIDDEN otherwise);
types the server controls (``m.fully_read``, set by read markers; ``m.push_rules``, set
through the push rules API) answer 405 M_BAD_JSON when a client sets them directly; an unset
type answers 404 M_NOT_FOUND.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from homeserver.client_api.common import Authenticator, Requester
from homeserver.config import ClientConfig
from homeserver.errors import MatrixError, forbidden, not_found
from homeserver.http import json_response, read_json_object
from homeserver.notifier import Notifier
from homeserver.push.rules import default_push_rules
from homeserver.storage.account_data import GLOBAL, AccountDataStore

# Set by the server only: m.fully_read through /read_markers (or a receipt), m.push_rules
# through the push rules API (push_rules.py).
SERVER_CONTROLLED = ("m.fully_read", "m.push_rules")
MAX_TYPE_LENGTH = 255


class AccountData:
    def __init__(self, store: AccountDataStore, notifier: Notifier) -> None:
        self.store = store
        self.notifier = notifier

    async def set(self, user_id: str, room_id: str, data_type: str, content: Mapping[str, Any]) -> int:
        """Store ``content`` and wake ``user_id``'s /sync long-polls; return the new position."""
        position = await self.store.put(user_id, room_id, data_type, content)
        self.notifier.wake_user(user_id)
        return position


class AccountDataAPI:
    def __init__(self, config: ClientConfig, auth: Authenticator, account_data: AccountData) -> None:
        self.config = config
        self.auth = auth
        self.account_data = account_data

    def routes(self) -> list[web.RouteDef]:
        u = "/_matrix/client/v3/user/{user_id}"
        return [
            web.put(f"{u}/account_data/{{data_type}}", self.put_global),
            web.get(f"{u}/account_data/{{data_type}}", self.get_global),
            web.put(f"{u}/rooms/{{room_id}}/account_data/{{data_type}}", self.put_room),
            web.get(f"{u}/rooms/{{room_id}}/account_data/{{data_type}}", self.get_room),
        ]

    async def _target(self, request: web.Request, verb: str) -> tuple[Requester, str, str]:
        """The requester, room (GLOBAL for global data) and type named by the path."""
        req = await self.auth.requester(request)
        if request.match_info["user_id"] != req.user_id:
            raise forbidden(f"Cannot {verb} account data of other users")
        room_id = request.match_info.get("room_id", GLOBAL)
        if "room_id" in request.match_info and (not room_id.startswith("!") or len(room_id) < 2
                                          or len(room_id.encode()) > 255):
            raise MatrixError(400, "M_INVALID_PARAM", "Not a valid room ID")
        data_type = request.match_info["data_type"]
        if not data_type or len(data_type) > MAX_TYPE_LENGTH:
            raise MatrixError(400, "M_INVALID_PARAM", "Invalid account data type")
        return req, room_id, data_type

    async def _put(self, request: web.Request) -> web.Response:
        req, room_id, data_type = await self._target(request, "set")
        content = await read_json_object(request, self.config.max_body_bytes)
        if data_type in SERVER_CONTROLLED:
            raise MatrixError(405, "M_BAD_JSON", f"Cannot set {data_type} through this API")
        await self.account_data.set(req.user_id, room_id, data_type, content)
        return json_response({})

    async def _get(self, request: web.Request) -> web.Response:
        req, room_id, data_type = await self._target(request, "read")
        content = await self.account_data.store.get(req.user_id, room_id, data_type)
        if content is None and room_id == GLOBAL and data_type == "m.push_rules":
            content = {"global": default_push_rules(req.user_id)}  # never changed: the defaults
        if content is None:
            raise not_found("Room account data not found" if room_id else "Account data not found")
        return json_response(content)

    put_global = put_room = _put
    get_global = get_room = _get



async def account_data_for_sync(
    store: AccountDataStore, user_id: str, since: int | None, upto: int
) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """/sync's account data: the global events and the events per room changed in
    (since, upto], or all of them up to ``upto`` on an initial sync (``since`` None), when
    the read-only ``m.push_rules`` is given too."""
    global_events: list[dict[str, Any]] = []
    by_room: dict[str, list[dict[str, Any]]] = {}
    for entry in await store.changes(user_id, since or 0, upto):
        event = {"type": entry.type, "content": entry.content}
        if entry.room_id == GLOBAL:
            global_events.append(event)
        else:
            by_room.setdefault(entry.room_id, []).append(event)
    if since is None and not any(e["type"] == "m.push_rules" for e in global_events):
        # A user who never changed a rule has the server-default set (client_api/push_rules.py
        # stores the set as account data on every change).
        global_events.append({"type": "m.push_rules", "content": {"global": default_push_rules(user_id)}})
    return global_events, by_room
