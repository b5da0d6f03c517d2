"""Room tags (the spec's "Room Tagging" module): ``GET /user/{userId}/rooms/{roomId}/tags``,
``PUT`` and ``DELETE /user/{userId}/rooms/{roomId}/tags/{tag}``.

The tags are the room's ``m.tag`` account data (``{"tags": {tag: {"order": 0.5}}}``),
changed through ``AccountData.set`` so that /sync carries the new ``m.tag`` in the room's
``account_data`` and wakes waiting long-polls. A user reads and changes only their own
tags (403). ``order`` is optional and a number in [0, 1]; a tag is at most
``MAX_TAG_LENGTH`` characters, its content (``order`` and any other keys a client keeps)
at most ``MAX_TAG_CONTENT`` bytes (413 ``M_TOO_LARGE``: a room's 100 tags of a request body
each made one ``m.tag`` of 100 MB, read and written whole by every change and sent in
every initial /sync), and a room holds at most ``MAX_TAGS`` tags. Changes of one
user's tags in one room are serialised (read, change, write under a lock).
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from homeserver.client_api.account_data import AccountData
from homeserver.client_api.common import Authenticator, Requester
from homeserver.config import ClientConfig
from homeserver.errors import MatrixError, forbidden
from homeserver.http import json_response, read_json_object
from homeserver.util.locks import KeyedLock

M_TAG = "m.tag"
MAX_TAG_LENGTH = 255
MAX_TAGS = 100
MAX_TAG_CONTENT = 4096


def tags_of(content: Any) -> dict[str, Any]:
    """The ``tags`` object of an ``m.tag`` content (empty when unset or malformed)."""
    if isinstance(content, dict) and isinstance(content.get("tags"), dict):
        return {k: v for k, v in content["tags"].items() if isinstance(v, dict)}
    return {}


def check_tag_body(body: dict[str, Any]) -> dict[str, Any]:
    order = body.get("order")
    if order is not None and (isinstance(order, bool) or not isinstance(order, (int, float))
                              or not 0 <= order <= 1):
        raise MatrixError(400, "M_BAD_JSON", "order must be a number between 0 and 1")
    if len(json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()) > MAX_TAG_CONTENT:
        raise MatrixError(413, "M_TOO_LARGE", f"A tag's content is at most {MAX_TAG_CONTENT} bytes")
    return body


class TagsAPI:
    def __init__(self, config: ClientConfig, auth: Authenticator, account_data: AccountData) -> None:
        self.config = config
        self.auth = auth
        self.account_data = account_data
        self._locks: KeyedLock[tuple[str, str]] = KeyedLock()

    def routes(self) -> list[web.RouteDef]:
        p = "/_matrix/client/v3/user/{user_id}/rooms/{room_id}/tags"
        return [
            web.get(p, self.get_tags),
            web.put(f"{p}/{{tag}}", self.put_tag),
            web.delete(f"{p}/{{tag}}", self.delete_tag),
        ]

    async def _target(self, request: web.Request) -> tuple[Requester, str]:
        req = await self.auth.requester(request)
        if request.match_info["user_id"] != req.user_id:
            raise forbidden("Cannot use the tags of other users")
        room_id = request.match_info["room_id"]
        if not room_id.startswith("!") or len(room_id) < 2 or len(room_id.encode()) > 255:
            raise MatrixError(400, "M_INVALID_PARAM", "Not a valid room ID")
        return req, room_id

    @staticmethod
    def _tag(request: web.Request) -> str:
        tag = request.match_info["tag"]
        if not tag or len(tag) > MAX_TAG_LENGTH:
            raise MatrixError(400, "M_INVALID_PARAM", f"A tag is 1 to {MAX_TAG_LENGTH} characters")
        return tag

    async def get_tags(self, request: web.Request) -> web.Response:
        req, room_id = await self._target(request)
        return json_response({"tags": tags_of(await self.account_data.store.get(req.user_id, room_id, M_TAG))})

    async def put_tag(self, request: web.Request) -> web.Response:
        req, room_id = await self._target(request)
        tag = self._tag(request)
        body = check_tag_body(await read_json_object(request, self.config.max_body_bytes))
        async with self._locks((req.user_id, room_id)):
            tags = tags_of(await self.account_data.store.get(req.user_id, room_id, M_TAG))
            if tag not in tags and len(tags) >= MAX_TAGS:
                raise MatrixError(400, "M_LIMIT_EXCEEDED", f"A room holds at most {MAX_TAGS} tags")
            tags[tag] = body
            await self.account_data.set(req.user_id, room_id, M_TAG, {"tags": tags})
        return json_response({})

    async def delete_tag(self, request: web.Request) -> web.Response:
        req, room_id = await self._target(request)
        tag = self._tag(request)
        async with self._locks((req.user_id, room_id)):
            tags = tags_of(await self.account_data.store.get(req.user_id, room_id, M_TAG))
            if tag in tags:
                del tags[tag]
                await self.account_data.set(req.user_id, room_id, M_TAG, {"tags": tags})
        return json_response({})
