"""Client API of presence: ``PUT/GET /presence/{userId}/status`` and /sync's part
(``SyncPresence``: ``set_presence``, and the ``presence`` section with its filter).

* PUT: only for oneself; ``presence`` online, unavailable or offline (absent: M_MISSING_PARAM); ``status_msg`` a
  string of at most ``MAX_STATUS_MSG_BYTES`` bytes (or null). With presence disabled it is
  accepted and nothing is kept.
* GET: oneself, or a user sharing a room with the requester (403 otherwise; 404 for a
  local user that does not exist). With presence disabled, everyone is offline.
* Changes are rate-limited per user (``CHANGE_RATE``): each visible change wakes the
  long-polls of every room the user is in, so a loop of PUTs (or of /syncs alternating
  ``set_presence``) would make the server recompute thousands of /syncs per second. A PUT
  over the limit is 429 M_LIMIT_EXCEEDED; a ``set_presence`` over it is ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from aiohttp import web

from homeserver.client_api.common import Authenticator
from homeserver.client_api.filtering import EventFilter, filter_events
from homeserver.client_api.ratelimit import RateLimiter
from homeserver.client_api.tokens import SyncToken, parse_sync_token
from homeserver.config import ClientConfig, RateLimitConfig
from homeserver.errors import MatrixError, forbidden
from homeserver.events.identifiers import is_valid_user_id, server_name_of
from homeserver.http import json_response, read_json_object
from homeserver.presence.edus import MAX_STATUS_MSG_BYTES, status_msg_ok
from homeserver.presence.service import PresenceService
from homeserver.presence.state import PRESENCE_STATES
from homeserver.storage.users import UserStore

CHANGE_RATE = RateLimitConfig(per_second=1.0, burst_count=20)


class PresenceAPI:
    def __init__(
        self, server_name: str, config: ClientConfig, auth: Authenticator, users: UserStore, presence: PresenceService
    ) -> None:
        self.server_name = server_name
        self.config = config
        self.auth = auth
        self.users = users
        self.presence = presence
        self.limiter = RateLimiter(CHANGE_RATE)

    def routes(self) -> list[web.RouteDef]:
        p = "/_matrix/client/v3/presence/{user_id}/status"
        return [web.put(p, self.put_status), web.get(p, self.get_status)]

    async def put_status(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        if request.match_info["user_id"] != req.user_id:
            raise forbidden("You can only set your own presence")
        body = await read_json_object(request, self.config.max_body_bytes)
        presence = body.get("presence")
        if presence is None:
            raise MatrixError(400, "M_MISSING_PARAM", "presence is required")
        if presence not in PRESENCE_STATES:
            raise MatrixError(400, "M_INVALID_PARAM", f"presence must be one of {', '.join(PRESENCE_STATES)}")
        status_msg = body.get("status_msg")
        if status_msg is not None and not status_msg_ok(status_msg):
            raise MatrixError(400, "M_INVALID_PARAM",
                              f"status_msg must be a string of at most {MAX_STATUS_MSG_BYTES} bytes")
        assert isinstance(presence, str)
        self.limiter.enforce(req.user_id)
        await self.presence.set_status(req.user_id, presence, status_msg)
        return json_response({})

    async def get_status(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        user_id = request.match_info["user_id"]
        if not is_valid_user_id(user_id):
            raise MatrixError(400, "M_INVALID_PARAM", "Invalid user ID")
        if user_id != req.user_id:
            if server_name_of(user_id) == self.server_name and not await self.users.user_exists(user_id):
                raise MatrixError(404, "M_NOT_FOUND", "No such user")
            if not await self.presence.may_see(req.user_id, user_id):
                raise forbidden("You do not share a room with this user")
        return json_response(self.presence.status(user_id))

    async def begin_sync(self, user_id: str, query: Mapping[str, str], flt: EventFilter) -> SyncPresence:
        """A /sync request: apply its ``set_presence`` (400 if not a presence state); ``flt``
        is the ``presence`` part of its filter (resolved and checked by sync.py)."""
        set_presence = query.get("set_presence", "online")
        if set_presence not in PRESENCE_STATES:
            raise MatrixError(400, "M_INVALID_PARAM", f"set_presence must be one of {', '.join(PRESENCE_STATES)}")
        current = self.presence.status(user_id).get("presence")
        if set_presence != current and isinstance(current, str) and self.limiter.check(user_id):
            set_presence = current  # over the limit: no change
        await self.presence.on_sync(user_id, set_presence)
        return SyncPresence(self.presence, user_id, flt)


class SyncPresence:
    """One /sync request's presence: ``add_to`` fills the ``presence`` section of each
    body computed and moves its ``next_batch`` token's presence position."""

    def __init__(self, service: PresenceService, user_id: str, flt: EventFilter) -> None:
        self.service = service
        self.user_id = user_id
        self.filter = flt

    async def add_to(self, body: dict[str, Any], since: SyncToken | None) -> bool:
        """True when the body now has presence to show."""
        events, position = await self.service.sync_events(self.user_id, since.presence if since is not None else None)
        events = filter_events(self.filter, events)
        body["presence"] = {"events": events}
        body["next_batch"] = replace(parse_sync_token(body["next_batch"]), presence=position).encode()
        return bool(events)
