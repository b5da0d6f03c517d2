"""The client's space hierarchy (``GET /_matrix/client/v1/rooms/{roomId}/hierarchy``): a
depth-first walk of the ``m.space.child`` tree from a room the user may see, one page at a
time.

Rooms we hold are read from our own state (``rooms/hierarchy.py``). A child we do not
hold is asked of the servers its ``m.space.child`` event names in ``via`` (at most
``MAX_VIA_TRIED`` of them, never ourselves) with the federation ``/hierarchy``, through
the one outbound client: each request bounded by ``PER_SERVER_SECONDS`` and
``MAX_REPLY_BYTES``, every request of one page together by ``PAGE_REMOTE_SECONDS``. The
answers are sanitised (spec keys and types only) and cached for ``REMOTE_CACHE_SECONDS``;
the summaries of children they carry are used as they are for rooms that are not spaces
(or at the depth limit), so a leaf costs no request of its own. A room is shown only when
the user may see it (``SpaceHierarchy.user_may_see``); rooms another server calls
inaccessible are not asked about again.

Pagination: the rest of the walk is kept in memory under a random ``next_batch`` token
(at most ``MAX_SESSIONS``, ``MAX_SESSIONS_PER_USER`` of one user, each for
``SESSION_SECONDS``) tied to the user, the room and
the parameters; a token that is unknown, expired or given with other parameters is
refused (``BadPaginationToken``). One page visits at most ``MAX_VISITS`` rooms; one walk
holds at most ``MAX_STACK`` rooms to visit and visits at most ``MAX_WALK_ROOMS``.
"""

from __future__ import annotations

import logging
import secrets
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from homeserver.events.identifiers import is_valid_server_name, server_name_of
from homeserver.net.client import FederationClient, FederationRequestError
from homeserver.rooms.errors import NotAllowed, RoomError
from homeserver.rooms.fetcher import Budget
from homeserver.rooms.hierarchy import (
    MAX_CHILDREN,
    SPACE,
    SpaceHierarchy,
    ordered_children,
    sanitize_child,
    sanitize_summary,
    valid_via,
)
from homeserver.util.clock import SYSTEM_CLOCK, Clock
from homeserver.util.lru import LruCache

log = logging.getLogger(__name__)

FED = "/_matrix/federation/v1"
MAX_VIA_TRIED = 3
PER_SERVER_SECONDS = 10.0
PAGE_REMOTE_SECONDS = 20.0
MAX_REPLY_BYTES = 1024 * 1024
REMOTE_CACHE_SECONDS = 60.0
REMOTE_CACHE_SIZE = 1000
MAX_SESSIONS = 1000
MAX_SESSIONS_PER_USER = 20
SESSION_SECONDS = 300.0
MAX_VISITS = 500
# One walk, over all its pages: rooms waiting to be visited, rooms visited. Past these the
# walk ends (a parked walk costs bounded memory).
MAX_STACK = 2000
MAX_WALK_ROOMS = 5000


class BadPaginationToken(RoomError):
    """``from`` is not a token of this walk (M_INVALID_PARAM)."""


@dataclass(slots=True)
class _Entry:
    room_id: str
    via: tuple[str, ...]
    depth: int
    remote: dict[str, Any] | None = None  # its summary, as its parent's server gave it


@dataclass(slots=True)
class _Walk:
    user_id: str
    room_id: str
    suggested_only: bool
    max_depth: int | None
    stack: list[_Entry]
    processed: set[str] = field(default_factory=set)
    inaccessible: set[str] = field(default_factory=set)
    expires: float = 0.0


@dataclass(frozen=True, slots=True)
class _Remote:
    summary: dict[str, Any]
    children_state: list[dict[str, Any]]
    children: dict[str, dict[str, Any]]
    inaccessible: frozenset[str]


class SpaceWalker:
    def __init__(
        self, hierarchy: SpaceHierarchy, client: FederationClient, *, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.hierarchy = hierarchy
        self.server_name = hierarchy.server_name
        self._client = client
        self._clock = clock
        self._walks: OrderedDict[str, _Walk] = OrderedDict()
        self._cache: LruCache[tuple[str, bool], tuple[float, _Remote | None]] = LruCache(REMOTE_CACHE_SIZE)

    # ------------------------------------------------------------------ entry point

    async def page(
        self, user_id: str, room_id: str, *, suggested_only: bool, max_depth: int | None, limit: int,
        token: str | None, hints: Sequence[str] = (),
    ) -> dict[str, Any]:
        walk = self._resume(token, user_id, room_id, suggested_only, max_depth) if token else None
        first_remote = False
        if walk is None:
            root = await self.hierarchy.local(room_id)
            via: tuple[str, ...] = ()
            if root is None:
                # A space we do not hold (an invite to it, a link): asked of the servers that
                # may have it; shown only if the user may see it as that server describes it.
                via = tuple(await self._root_servers(user_id, room_id, hints))
                first_remote = bool(via)
            if (root is None and not via) or (
                    root is not None and not await self.hierarchy.user_may_see(user_id, room_id, root[0])):
                raise NotAllowed(f"{user_id} may not see room {room_id}")
            walk = _Walk(user_id, room_id, suggested_only, max_depth, [_Entry(room_id, via, 0)])
        rooms: list[dict[str, Any]] = []
        budget = Budget(PAGE_REMOTE_SECONDS, self._clock)
        visits = 0
        while walk.stack and len(rooms) < limit and visits < MAX_VISITS:
            entry = walk.stack.pop()
            if entry.room_id in walk.processed:
                continue
            walk.processed.add(entry.room_id)
            visits += 1
            found = await self._visit(walk, entry, budget)
            if found is None:
                if first_remote:
                    raise NotAllowed(f"{user_id} may not see room {room_id}")
                continue
            first_remote = False
            summary, children = found
            children = ordered_children(children, suggested_only)
            rooms.append({**summary, "children_state": children})
            if max_depth is not None and entry.depth >= max_depth:
                continue
            remote = self._cached_children(entry.room_id, suggested_only)
            pending = [_Entry(c["state_key"], tuple(valid_via(c["content"])), entry.depth + 1,
                              remote.get(c["state_key"]))
                       for c in children if c["state_key"] not in walk.processed]
            # Depth first: the first child is visited next (the first ones kept at the bound).
            walk.stack.extend(reversed(pending[:max(0, MAX_STACK - len(walk.stack))]))
        out: dict[str, Any] = {"rooms": rooms}
        if walk.stack and len(walk.processed) < MAX_WALK_ROOMS:
            out["next_batch"] = self._park(walk)
        return out

    async def _root_servers(self, user_id: str, room_id: str, hints: Sequence[str]) -> list[str]:
        """Servers to ask about a root we do not hold: the client's ``via`` hints, the
        server of whoever invited the user, and the room ID's server (before room v12)."""
        servers = [h for h in hints if is_valid_server_name(h)][:MAX_VIA_TRIED]
        invite = await self.hierarchy.rooms.memberships.get_invite(user_id, room_id)
        if invite is not None:
            servers.append(server_name_of(invite.sender))
        if ":" in room_id:
            servers.append(room_id.split(":", 1)[1])
        return [s for s in dict.fromkeys(servers) if s and s != self.server_name]

    # ------------------------------------------------------------------ sessions

    def _resume(
        self, token: str, user_id: str, room_id: str, suggested_only: bool, max_depth: int | None
    ) -> _Walk:
        now = self._clock.monotonic()
        for key in [k for k, w in self._walks.items() if w.expires <= now]:
            del self._walks[key]
        walk = self._walks.pop(token, None)
        if walk is None:
            raise BadPaginationToken("Unknown or expired pagination token")
        if (walk.user_id, walk.room_id, walk.suggested_only, walk.max_depth) != (
            user_id, room_id, suggested_only, max_depth
        ):
            raise BadPaginationToken("The pagination token was given for other parameters")
        return walk

    def _park(self, walk: _Walk) -> str:
        token = secrets.token_urlsafe(18)
        walk.expires = self._clock.monotonic() + SESSION_SECONDS
        self._walks[token] = walk
        # One user's walks make room for their own newer ones, not by dropping other users'.
        own = [k for k, w in self._walks.items() if w.user_id == walk.user_id]
        for key in own[: max(0, len(own) - MAX_SESSIONS_PER_USER)]:
            del self._walks[key]
        while len(self._walks) > MAX_SESSIONS:
            self._walks.popitem(last=False)
        return token

    # ------------------------------------------------------------------ one room

    async def _visit(
        self, walk: _Walk, entry: _Entry, budget: Budget
    ) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        held = await self.hierarchy.local(entry.room_id)
        if held is not None:
            if entry.depth == 0 or await self.hierarchy.user_may_see(walk.user_id, entry.room_id, held[0]):
                return held
            return None
        if entry.room_id in walk.inaccessible:  # as another server said: not asked again
            return None
        at_limit = walk.max_depth is not None and entry.depth >= walk.max_depth
        if entry.remote is not None and (entry.remote.get("room_type") != SPACE or at_limit):
            summary, children = entry.remote, []
        else:
            remote = await self._remote(entry.room_id, entry.via, walk.suggested_only, budget)
            if remote is None:
                return None
            walk.inaccessible.update(remote.inaccessible)
            summary, children = remote.summary, remote.children_state
        if not await self.hierarchy.user_may_see(walk.user_id, entry.room_id, summary):
            return None
        return summary, children

    def _cached_children(self, room_id: str, suggested_only: bool) -> dict[str, dict[str, Any]]:
        cached = self._cache.peek((room_id, suggested_only))
        return cached[1].children if cached is not None and cached[1] is not None else {}

    async def _remote(self, room_id: str, via: tuple[str, ...], suggested_only: bool, budget: Budget) -> _Remote | None:
        key = (room_id, suggested_only)
        cached = self._cache.get(key)
        if cached is not None and cached[0] > self._clock.monotonic():
            return cached[1]
        found: _Remote | None = None
        tried = 0
        for server in via:
            if server == self.server_name or not is_valid_server_name(server):
                continue
            if tried >= MAX_VIA_TRIED or budget.left() <= 0:
                break
            tried += 1
            try:
                reply = await self._client.get_json(
                    server, f"{FED}/hierarchy/{quote(room_id, safe='')}",
                    query={"suggested_only": "true" if suggested_only else "false"},
                    timeout=max(0.001, min(PER_SERVER_SECONDS, budget.left())), max_bytes=MAX_REPLY_BYTES,
                )
            except FederationRequestError as e:
                log.info("remote hierarchy not had",
                         extra={"server": server, "room_id": room_id, "error": str(e)[:300]})
                continue
            found = parse_reply(room_id, reply)
            if found is not None:
                break
        if tried:
            self._cache[key] = (self._clock.monotonic() + REMOTE_CACHE_SECONDS, found)
        return found


def parse_reply(room_id: str, reply: Any) -> _Remote | None:
    """A federation ``/hierarchy`` answer for ``room_id``, sanitised; None if unusable."""
    if not isinstance(reply, dict) or not isinstance(reply.get("room"), dict):
        return None
    summary = sanitize_summary(reply["room"])
    if summary is None or summary["room_id"] != room_id:
        return None
    raw_children = reply["room"].get("children_state")
    children_state = [c for c in (sanitize_child(x) for x in raw_children[:MAX_CHILDREN])
                      if c is not None] if isinstance(raw_children, list) else []
    named = {c["state_key"] for c in children_state}
    children: dict[str, dict[str, Any]] = {}
    raw = reply.get("children")
    for item in raw[:MAX_CHILDREN] if isinstance(raw, list) else []:
        child = sanitize_summary(item)
        if child is not None and child["room_id"] in named:
            children[child["room_id"]] = child
    raw_inaccessible = reply.get("inaccessible_children")
    inaccessible = frozenset(
        r for r in (raw_inaccessible[:MAX_CHILDREN] if isinstance(raw_inaccessible, list) else [])
        if isinstance(r, str) and r in named
    )
    return _Remote(summary, children_state, children, inaccessible)
