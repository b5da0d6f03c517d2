"""Rooms and membership for clients: createRoom (``room_alias_name`` and ``visibility``
through the room directory), join and knock (by ID or alias, with server_name / via),
invite, leave, kick, ban, unban, forget, joined_rooms, and reading a room's state and
members.

Handlers are thin: parse and check the body, call the room service, map its errors
(``room_errors``). Reads go through ``access.room_access``, so a non-member gets
M_FORBIDDEN and a former member sees the room as it was when they left.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from aiohttp import web

from homeserver.client_api.access import room_access, visible_state_ids
from homeserver.client_api.common import (
    Authenticator,
    client_event,
    require_str,
    require_user_id,
    room_errors,
)
from homeserver.client_api.directory import directory_errors
from homeserver.config import ClientConfig
from homeserver.errors import MatrixError, forbidden, not_found
from homeserver.events.event import Event
from homeserver.http import json_response, read_json_object
from homeserver.rooms.directory import RoomDirectory
from homeserver.rooms.redactions import applied_redactions, redacted, served
from homeserver.rooms.service import RoomService
from homeserver.storage.events import EventStore, Outcome
from homeserver.storage.timeline import TimelineStore
from homeserver.util.clock import SYSTEM_CLOCK, Clock

PRESETS = ("private_chat", "public_chat", "trusted_private_chat")
MAX_INVITES = 100


def _room_id(request: web.Request) -> str:
    room_id = request.match_info["room_id"]
    if not room_id.startswith("!"):
        raise MatrixError(400, "M_INVALID_PARAM", "Not a room ID")
    return room_id


def _optional_object(body: dict[str, Any], key: str) -> dict[str, Any] | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise MatrixError(400, "M_BAD_JSON", f"{key} must be an object")
    return value


class RoomsAPI:
    def __init__(
        self, config: ClientConfig, auth: Authenticator, rooms: RoomService, events: EventStore,
        timeline: TimelineStore, directory: RoomDirectory | None = None, *, clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.clock = clock
        self.config = config
        self.auth = auth
        self.rooms = rooms
        self.events = events
        self.timeline = timeline
        self.directory = directory

    def routes(self) -> list[web.RouteDef]:
        p = "/_matrix/client/v3"
        r = f"{p}/rooms/{{room_id}}"
        return [
            web.post(f"{p}/createRoom", self.create_room),
            web.post(f"{p}/join/{{room_id_or_alias}}", self.join_by_id_or_alias),
            web.post(f"{r}/join", self.join_room),
            web.post(f"{p}/knock/{{room_id_or_alias}}", self.knock),
            web.post(f"{r}/invite", self.invite),
            web.post(f"{r}/leave", self.leave),
            web.post(f"{r}/kick", self.kick),
            web.post(f"{r}/ban", self.ban),
            web.post(f"{r}/unban", self.unban),
            web.post(f"{r}/forget", self.forget),
            web.get(f"{p}/joined_rooms", self.joined_rooms),
            web.get(f"{r}/state", self.get_state),
            web.get(f"{r}/state/{{event_type}}", self.get_state_event),
            web.get(f"{r}/state/{{event_type}}/{{state_key:.*}}", self.get_state_event),
            web.get(f"{r}/members", self.members),
            web.get(f"{r}/joined_members", self.joined_members),
        ]

    async def _body(self, request: web.Request) -> dict[str, Any]:
        return await read_json_object(request, self.config.max_body_bytes)

    # ------------------------------------------------------------------ createRoom

    async def create_room(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        body = await self._body(request)
        visibility = body.get("visibility", "private")
        if visibility not in ("private", "public"):
            raise MatrixError(400, "M_INVALID_PARAM", "visibility must be public or private")
        preset = body.get("preset")
        if preset is not None and preset not in PRESETS:
            raise MatrixError(400, "M_INVALID_PARAM", f"preset must be one of {', '.join(PRESETS)}")
        invite = body.get("invite", [])
        if not isinstance(invite, list) or not all(isinstance(u, str) for u in invite):
            raise MatrixError(400, "M_BAD_JSON", "invite must be a list of user IDs")
        if len(invite) > MAX_INVITES:
            raise MatrixError(400, "M_INVALID_PARAM", f"At most {MAX_INVITES} invites")
        for user in invite:
            if not user.startswith("@") or ":" not in user:
                raise MatrixError(400, "M_INVALID_PARAM", f"{user!r} is not a user ID")
        initial_state = body.get("initial_state", [])
        if not isinstance(initial_state, list):
            raise MatrixError(400, "M_BAD_JSON", "initial_state must be a list")
        for item in initial_state:
            if (
                not isinstance(item, dict)
                or not isinstance(item.get("type"), str)
                or not isinstance(item.get("state_key", ""), str)
                or not isinstance(item.get("content"), dict)
            ):
                raise MatrixError(400, "M_BAD_JSON", "initial_state entries need type, state_key and content")
        room_version = body.get("room_version")
        if room_version is not None and not isinstance(room_version, str):
            raise MatrixError(400, "M_BAD_JSON", "room_version must be a string")
        is_direct = body.get("is_direct", False)
        if not isinstance(is_direct, bool):
            raise MatrixError(400, "M_BAD_JSON", "is_direct must be a boolean")
        name = require_str(body, "name", optional=True)
        topic = require_str(body, "topic", optional=True)
        creation_content = _optional_object(body, "creation_content")
        power_level_content_override = _optional_object(body, "power_level_content_override")
        alias_name = require_str(body, "room_alias_name", optional=True)
        directory = self.directory
        if directory is None and alias_name is not None:
            raise MatrixError(400, "M_UNRECOGNIZED", "This server has no room directory")
        in_use = MatrixError(400, "M_ROOM_IN_USE", f"Room alias {alias_name!r} is already in use")
        with room_errors(), directory_errors(in_use=in_use):
            alias = directory.local_alias(alias_name) if directory is not None and alias_name is not None else None

            def create() -> Awaitable[str]:
                return self.rooms.create_room(
                    req.user_id,
                    room_version=room_version,
                    preset=preset,
                    name=name,
                    topic=topic,
                    invite=tuple(invite),
                    initial_state=tuple(initial_state),
                    creation_content=creation_content,
                    power_level_content_override=power_level_content_override,
                    is_direct=is_direct,
                    visibility=visibility,
                    canonical_alias=alias,
                )

            # The alias is checked free before the room exists; the room is then published
            # when visibility is public.
            if directory is None:
                room_id = await create()
            else:
                room_id = await directory.create_room(req.user_id, alias, publish=visibility == "public",
                                                      create=create)
        return json_response({"room_id": room_id})

    # ------------------------------------------------------------------ membership

    @staticmethod
    def _target_and_via(request: web.Request) -> tuple[str, list[str]]:
        """``{roomIdOrAlias}`` (checked) and the servers to try (``via``, ``server_name``)."""
        target = request.match_info["room_id_or_alias"]
        if not target.startswith(("!", "#")):
            raise MatrixError(400, "M_INVALID_PARAM", "Not a room ID or alias")
        return target, [*request.query.getall("via", []), *request.query.getall("server_name", [])]

    async def join_by_id_or_alias(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        target, via = self._target_and_via(request)
        return await self._join(request, req.user_id, target, via)

    async def join_room(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        return await self._join(request, req.user_id, _room_id(request), [])

    async def _join(self, request: web.Request, user_id: str, target: str, via: list[str]) -> web.Response:
        body = await self._body(request) if request.can_read_body else {}
        reason = require_str(body, "reason", optional=True)
        content = {"reason": reason} if reason else None
        with room_errors(), directory_errors():
            room_id = await self.rooms.join(user_id, target, via=tuple(dict.fromkeys(via)), content=content)
        return json_response({"room_id": room_id})

    async def knock(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        target, via = self._target_and_via(request)
        body = await self._body(request) if request.can_read_body else {}
        reason = require_str(body, "reason", optional=True)
        with room_errors(), directory_errors():
            room_id = await self.rooms.knock(req.user_id, target, via=tuple(dict.fromkeys(via)), reason=reason)
        return json_response({"room_id": room_id})

    async def invite(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        body = await self._body(request)
        target = require_user_id(body)
        with room_errors():
            await self.rooms.invite(req.user_id, _room_id(request), target)
        return json_response({})

    async def leave(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        body = await self._body(request) if request.can_read_body else {}
        reason = require_str(body, "reason", optional=True)
        with room_errors():
            await self.rooms.leave(req.user_id, _room_id(request), reason=reason)
        return json_response({})

    async def kick(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        body = await self._body(request)
        target = require_user_id(body)
        reason = require_str(body, "reason", optional=True)
        with room_errors():
            await self.rooms.kick(req.user_id, _room_id(request), target, reason=reason)
        return json_response({})

    async def ban(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        body = await self._body(request)
        target = require_user_id(body)
        reason = require_str(body, "reason", optional=True)
        with room_errors():
            await self.rooms.ban(req.user_id, _room_id(request), target, reason=reason)
        return json_response({})

    async def unban(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        body = await self._body(request)
        target = require_user_id(body)
        with room_errors():
            await self.rooms.unban(req.user_id, _room_id(request), target)
        return json_response({})

    async def forget(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        with room_errors():
            await self.rooms.forget(req.user_id, _room_id(request))
        return json_response({})

    async def joined_rooms(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        rooms = await self.rooms.rooms_for_user(req.user_id)
        return json_response({"joined_rooms": sorted(r for r, m in rooms.items() if m == "join")})

    # ------------------------------------------------------------------ reading state

    async def _visible_state(self, user_id: str, room_id: str) -> tuple[list[Event], dict[str, Event]]:
        """The room's state the user may see, and the redactions applied to it."""
        access = await room_access(self.timeline, user_id, room_id)
        ids = await visible_state_ids(self.events, room_id, access)
        found = await self.events.get_events(ids.values())
        state = [found[i].event for i in ids.values() if i in found and found[i].outcome is not Outcome.REJECTED]
        return state, await applied_redactions(self.events, state)

    async def get_state(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        state, redactions = await self._visible_state(req.user_id, _room_id(request))
        now = self.clock.time_ms()
        return json_response([client_event(e, now_ms=now, redacted_because=redactions.get(e.event_id)) for e in state])

    async def get_state_event(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        event_type = request.match_info["event_type"]
        state_key = request.match_info.get("state_key", "")
        state, redactions = await self._visible_state(req.user_id, _room_id(request))
        for event in state:
            if event.type == event_type and event.state_key == state_key:
                because = redactions.get(event.event_id)
                if request.query.get("format") == "event":
                    return json_response(client_event(event, now_ms=self.clock.time_ms(), redacted_because=because))
                return json_response(dict((redacted(event) if because is not None else event).content))
        raise not_found("Event not found")

    async def members(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        state, redactions = await self._visible_state(req.user_id, _room_id(request))
        wanted = request.query.get("membership")
        unwanted = request.query.get("not_membership")
        now = self.clock.time_ms()
        chunk = [
            client_event(e, now_ms=now, redacted_because=redactions.get(e.event_id))
            for e in state
            if e.type == "m.room.member"
            and (wanted is None or e.membership == wanted)
            and (unwanted is None or e.membership != unwanted)
        ]
        return json_response({"chunk": chunk})

    async def joined_members(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        room_id = _room_id(request)
        access = await room_access(self.timeline, req.user_id, room_id)
        if access.membership != "join":
            raise forbidden("You are not in this room")
        state, redactions = await self._visible_state(req.user_id, room_id)
        joined: dict[str, Any] = {}
        for e in served(state, redactions):
            if e.type == "m.room.member" and e.membership == "join" and e.state_key is not None:
                name, avatar = e.content.get("displayname"), e.content.get("avatar_url")
                joined[e.state_key] = {
                    "display_name": name if isinstance(name, str) else None,
                    "avatar_url": avatar if isinstance(avatar, str) else None,
                }
        return json_response({"joined": joined})
