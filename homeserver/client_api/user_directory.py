"""``POST /user_directory/search``: users whose ID or display name contains the search term
(case-insensitively), among those who share a room with the requester or are in a public
room (join rule ``public``), as Synapse's default directory. Names and avatars come from
their member events in those rooms (local users' from their profiles, which their member
events follow). No index: the rooms' current members are read per search, at most
``MAX_CANDIDATES`` of them (``limited`` says when the scan stopped early).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from homeserver.client_api.common import Authenticator
from homeserver.config import ClientConfig
from homeserver.errors import MatrixError
from homeserver.http import json_response, read_json_object
from homeserver.storage.events import EventStore
from homeserver.util.iters import batch_iter

DEFAULT_LIMIT = 10
MAX_LIMIT = 100
MAX_CANDIDATES = 20_000
_CHUNK = 500


class UserDirectoryAPI:
    def __init__(self, config: ClientConfig, auth: Authenticator, events: EventStore) -> None:
        self.config = config
        self.auth = auth
        self.events = events

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/_matrix/client/v3/user_directory/search", self.search)]

    async def search(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        body = await read_json_object(request, self.config.max_body_bytes)
        term = body.get("search_term")
        if not isinstance(term, str):
            raise MatrixError(400, "M_BAD_JSON", "search_term must be a string")
        limit = body.get("limit", DEFAULT_LIMIT)
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            raise MatrixError(400, "M_BAD_JSON", "limit must be a non-negative integer")
        limit = min(limit, MAX_LIMIT)
        needle = term.strip().casefold()
        rooms = await self._rooms(req.user_id)
        candidates, capped = await self._members(rooms)
        found: dict[str, dict[str, Any]] = {}
        for user_id, content in candidates:
            if user_id in found:
                continue
            name = content.get("displayname")
            name = name if isinstance(name, str) else None
            if needle not in user_id.casefold() and (name is None or needle not in name.casefold()):
                continue
            entry: dict[str, Any] = {"user_id": user_id}
            if name is not None:
                entry["display_name"] = name
            avatar = content.get("avatar_url")
            if isinstance(avatar, str):
                entry["avatar_url"] = avatar
            found[user_id] = entry
        # Closest first: an ID or name that starts with the term, then by user ID.
        ranked = sorted(found.values(), key=lambda e: (not _starts(e, needle), e["user_id"]))
        return json_response({"results": ranked[:limit], "limited": capped or len(ranked) > limit})

    async def _rooms(self, user_id: str) -> list[str]:
        """The rooms the user is joined to, and the public ones."""
        mine = await self.events.joined_rooms(user_id)
        rules = await self.events.rooms_with_state("m.room.join_rules")
        events = await self.events.get_events(r[1] for r in rules)
        public = [
            room_id for room_id, event_id in rules
            if event_id in events and events[event_id].event.content.get("join_rule") == "public"
        ]
        return list(dict.fromkeys([*mine, *public]))

    async def _members(self, rooms: list[str]) -> tuple[list[tuple[str, dict[str, Any]]], bool]:
        """(user ID, member event content) of the rooms' joined members; whether capped."""
        out: list[tuple[str, dict[str, Any]]] = []
        for chunk in batch_iter(rooms, _CHUNK):
            rows = await self.events.joined_member_events(chunk, MAX_CANDIDATES - len(out) + 1)
            capped = len(out) + len(rows) > MAX_CANDIDATES
            rows = rows[: MAX_CANDIDATES - len(out)]
            events = await self.events.get_events(r[1] for r in rows)
            out.extend((r[0], dict(events[r[1]].event.content)) for r in rows if r[1] in events)
            if capped:
                return out, True
        return out, False


def _starts(entry: dict[str, Any], needle: str) -> bool:
    localpart = entry["user_id"][1:].casefold()
    name = str(entry.get("display_name") or "").casefold()
    return localpart.startswith(needle) or name.startswith(needle)
