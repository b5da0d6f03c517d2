"""Room aliases and the published room directory.

Aliases (client-server "Room aliases"): ``#localpart:server`` maps to a room. We hold the
aliases of our own server name; an alias of another server is resolved by asking that
server (federation ``/query/directory``, one request with a bounded timeout), and we
answer that query for ours with the room ID and the servers with joined members (ours
first). Creating an alias needs a joined member of the room; deleting one needs its
creator or a member with the power to send ``m.room.canonical_alias``. A deleted alias is
also taken out of the room's ``m.room.canonical_alias`` when the deleting user may send it
(best effort: the alias is deleted either way, as the spec recommends).

createRoom's ``room_alias_name`` goes through ``create_room``: under a per-alias lock the
alias is checked free (``AliasInUse`` before any event exists), the room is created, and
the alias stored; ``PUT /directory/room`` takes the same lock, so neither can take an alias
the other just checked. One process per server (see the README's limits) makes the
in-memory lock enough; the table's primary key still refuses a second owner.

The published room directory lists the rooms whose visibility is ``public`` and that one of
our users is still joined to, largest first, with their name, topic, canonical alias,
avatar, join rule, history visibility, guest access and room type read from the current
state. Changing a room's visibility needs the same power as deleting others' aliases.
Pagination tokens are offsets into that order (``o<n>``): stable while the list does not
change, and cheap.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from homeserver.events.event import Event, StateKey
from homeserver.events.identifiers import MAX_ID_BYTES, is_valid_room_id, is_valid_server_name, server_name_of
from homeserver.events.power import get_power_level, parse_level
from homeserver.net.client import FederationClient, FederationRequestError
from homeserver.rooms.errors import NotAllowed, RemoteJoinFailed, RoomError, RoomNotFound
from homeserver.rooms.redactions import applied_redactions, served
from homeserver.rooms.service import RoomService
from homeserver.storage.directory import DirectoryStore, PublishedRoom

log = logging.getLogger(__name__)

V1 = "/_matrix/federation/v1"
REMOTE_QUERY_TIMEOUT = 10.0
MAX_REMOTE_SERVERS = 50
MAX_PUBLIC_ROOMS_PAGE = 500
MAX_SEARCH_TERM = 256
MAX_REMOTE_CHUNK = 1000
ALIAS_EVENT = "m.room.canonical_alias"
# The keys of a published room directory entry (PublishedRoomsChunk) and their types.
CHUNK_KEYS: dict[str, type] = {
    "room_id": str, "num_joined_members": int, "world_readable": bool, "guest_can_join": bool,
    "name": str, "topic": str, "canonical_alias": str, "avatar_url": str, "join_rule": str, "room_type": str,
}


class InvalidParam(RoomError):
    """A malformed request parameter (M_INVALID_PARAM)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvalidAlias(InvalidParam):
    """Not a room alias, or (where we must hold it) an alias of another server."""


class AliasInUse(RoomError):
    def __init__(self, room_alias: str) -> None:
        super().__init__(f"room alias {room_alias} is already in use")
        self.room_alias = room_alias


class AliasNotFound(RoomNotFound):
    def __init__(self, room_alias: str) -> None:
        super().__init__(room_alias, "room alias not found")
        self.room_alias = room_alias


class RemoteDirectoryFailed(RemoteJoinFailed):
    """Another server's directory could not be read (unreachable, timeout, bad reply)."""


def parse_alias(room_alias: object) -> tuple[str, str]:
    """(localpart, server name) of ``#localpart:server``; InvalidAlias if malformed. The
    localpart is any non-empty text without ``:``, NUL or surrogates; 255 bytes at most."""
    if not isinstance(room_alias, str) or not room_alias.startswith("#"):
        raise InvalidAlias("Room alias invalid: it must start with #")
    if len(room_alias.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
        raise InvalidAlias(f"Room alias invalid: longer than {MAX_ID_BYTES} bytes")
    localpart, sep, server = room_alias[1:].partition(":")
    if not sep or not localpart or "\x00" in localpart or any(0xD800 <= ord(c) <= 0xDFFF for c in localpart):
        raise InvalidAlias("Room alias invalid")
    if not is_valid_server_name(server):
        raise InvalidAlias("Room alias invalid: bad server name")
    return localpart, server


def _required_level(power_levels: Event | None, event_type: str) -> int:
    """The power needed to send state event ``event_type`` (0 with no power levels)."""
    if power_levels is None:
        return 0
    content, version = power_levels.content, power_levels.room_version
    events = content.get("events")
    if isinstance(events, dict) and event_type in events:
        value = parse_level(events[event_type], version)
        if value is not None:
            return value
    value = parse_level(content.get("state_default", 50), version)
    return 50 if value is None else value


def plain_topic(content: Mapping[str, Any]) -> str | None:
    """The plain-text topic: ``m.topic``'s text/plain body, else ``topic``."""
    rich = content.get("m.topic")
    texts = rich.get("m.text") if isinstance(rich, dict) else None
    if isinstance(texts, list):
        for text in texts:
            if isinstance(text, dict) and text.get("mimetype", "text/plain") == "text/plain" \
                    and isinstance(text.get("body"), str):
                return str(text["body"])
    topic = content.get("topic")
    return topic if isinstance(topic, str) else None


def sanitize_chunk_entry(entry: Any) -> dict[str, Any] | None:
    """A directory entry from another server, cut to the spec's keys with the spec's types
    (clients build objects from these keys); None without the required ones."""
    if not isinstance(entry, dict):
        return None
    out: dict[str, Any] = {}
    for key, kind in CHUNK_KEYS.items():
        value = entry.get(key)
        if isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
            out[key] = value
    if not isinstance(out.get("room_id"), str):
        return None
    out.setdefault("num_joined_members", 0)
    out.setdefault("world_readable", False)
    out.setdefault("guest_can_join", False)
    return out


def parse_since(since: str | None) -> int:
    if since is None or since == "":
        return 0
    if not since.startswith("o") or not since[1:].isdigit():
        raise InvalidParam("since is not a pagination token of this server")
    return int(since[1:])


class RoomDirectory:
    def __init__(
        self,
        server_name: str,
        store: DirectoryStore,
        rooms: RoomService,
        client: FederationClient,
        *,
        remote_timeout: float = REMOTE_QUERY_TIMEOUT,
    ) -> None:
        self.server_name = server_name
        self.store = store
        self.rooms = rooms
        self._events = rooms.store
        self._client = client
        self._timeout = remote_timeout
        self._alias_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def _alias_lock(self, room_alias: str) -> asyncio.Lock:
        lock = self._alias_locks.get(room_alias)
        if lock is None:
            lock = asyncio.Lock()
            self._alias_locks[room_alias] = lock
        return lock

    def local_alias(self, localpart: str) -> str:
        """``#localpart:ourserver``, checked (createRoom's ``room_alias_name``)."""
        room_alias = f"#{localpart}:{self.server_name}"
        local, _ = parse_alias(room_alias)
        if local != localpart:
            raise InvalidAlias("room_alias_name may not contain ':'")
        return room_alias

    def _our_alias(self, room_alias: str) -> None:
        _, server = parse_alias(room_alias)
        if server != self.server_name:
            raise InvalidAlias(f"Room alias {room_alias} is not an alias of this server")

    async def _require_room(self, room_id: str) -> None:
        if not room_id.startswith("!") or await self._events.get_room_version(room_id) is None:
            raise RoomNotFound(room_id)

    async def may_manage(self, user_id: str, room_id: str) -> bool:
        """A joined member with the power to send ``m.room.canonical_alias``."""
        member = await self.rooms.get_state_event(room_id, "m.room.member", user_id)
        if member is None or member.membership != "join":
            return False
        auth_state: dict[StateKey, Event] = {("m.room.member", user_id): member}
        for event_type in ("m.room.create", "m.room.power_levels"):
            event = await self.rooms.get_state_event(room_id, event_type, "")
            if event is not None:
                auth_state[(event_type, "")] = event
        required = _required_level(auth_state.get(("m.room.power_levels", "")), ALIAS_EVENT)
        return get_power_level(user_id, auth_state) >= required

    # ------------------------------------------------------------------ aliases

    async def create_alias(self, user_id: str, room_alias: str, room_id: str) -> None:
        """Map one of our aliases to a room a joined member names."""
        self._our_alias(room_alias)
        await self._require_room(room_id)
        membership, _ = await self.rooms.get_membership(user_id, room_id)
        if membership != "join":
            raise NotAllowed("only a member of the room may give it an alias")
        async with self._alias_lock(room_alias):
            if not await self.store.create_alias(room_alias, room_id, user_id):
                raise AliasInUse(room_alias)
        log.info("room alias created", extra={"room_alias": room_alias, "room_id": room_id})

    async def delete_alias(self, user_id: str, room_alias: str) -> None:
        self._our_alias(room_alias)
        async with self._alias_lock(room_alias):
            record = await self.store.get_alias(room_alias)
            if record is None:
                raise AliasNotFound(room_alias)
            if record.creator != user_id and not await self.may_manage(user_id, record.room_id):
                raise NotAllowed("only the alias's creator or a moderator of the room may delete it")
            if not await self.store.delete_alias(room_alias):
                raise AliasNotFound(room_alias)
        log.info("room alias deleted", extra={"room_alias": room_alias, "room_id": record.room_id})
        await self._drop_from_canonical_alias(user_id, record.room_id, room_alias)

    async def _drop_from_canonical_alias(self, user_id: str, room_id: str, room_alias: str) -> None:
        if not await self.rooms.participating(room_id):
            return
        event = await self.rooms.get_state_event(room_id, ALIAS_EVENT, "")
        if event is None:
            return
        content = dict(event.content)
        changed = False
        if content.get("alias") == room_alias:
            del content["alias"]
            changed = True
        alt = content.get("alt_aliases")
        if isinstance(alt, list) and room_alias in alt:
            content["alt_aliases"] = [a for a in alt if a != room_alias]
            changed = True
        if not changed:
            return
        try:
            await self.rooms.send_event(user_id, room_id, ALIAS_EVENT, content, state_key="")
        except RoomError as e:
            log.info("deleted alias left in the canonical alias event",
                     extra={"room_id": room_id, "room_alias": room_alias, "reason": str(e)})

    async def local_aliases(self, user_id: str, room_id: str) -> list[str]:
        """Our aliases of a room, for its joined members (anyone, if it is world-readable)."""
        if not room_id.startswith("!"):
            raise InvalidParam("Not a room ID")
        membership, _ = await self.rooms.get_membership(user_id, room_id)
        if membership != "join":
            hv = await self.rooms.get_state_event(room_id, "m.room.history_visibility", "")
            if hv is None or hv.content.get("history_visibility") != "world_readable":
                raise NotAllowed("You are not a member of the room")
        return await self.store.aliases_for_room(room_id)

    async def resolve(self, room_alias: str) -> tuple[str, list[str]]:
        """(room ID, servers likely in the room) for any alias: ours from the table, another
        server's by asking it. AliasNotFound, InvalidAlias or RemoteDirectoryFailed."""
        _, server = parse_alias(room_alias)
        if server == self.server_name:
            found = await self.resolve_local(room_alias)
            if found is None:
                raise AliasNotFound(room_alias)
            return found
        return await self._query_remote(server, room_alias)

    async def resolve_local(self, room_alias: str) -> tuple[str, list[str]] | None:
        record = await self.store.get_alias(room_alias)
        if record is None:
            return None
        return record.room_id, await self.servers_in_room(record.room_id)

    async def servers_in_room(self, room_id: str) -> list[str]:
        """Servers with joined members in our view of the room: ours first when one of our
        users is joined, then by how many members they have."""
        members = await self._events.joined_members(room_id)
        counts = Counter(server_name_of(u) for u in members if ":" in u)
        ours = counts.pop(self.server_name, 0)
        others = [s for s, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
        return [self.server_name, *others] if ours else others

    async def _query_remote(self, server: str, room_alias: str) -> tuple[str, list[str]]:
        try:
            body = await self._client.get_json(
                server, f"{V1}/query/directory", query={"room_alias": room_alias}, timeout=self._timeout
            )
        except FederationRequestError as e:
            if e.status == 404:
                raise AliasNotFound(room_alias) from None
            raise RemoteDirectoryFailed(f"could not resolve {room_alias} through {server}: {e}") from None
        room_id = body.get("room_id") if isinstance(body, dict) else None
        if not (is_valid_room_id(room_id, hash_format=False) or is_valid_room_id(room_id, hash_format=True)):
            raise RemoteDirectoryFailed(f"{server} answered {room_alias} without a valid room ID")
        assert isinstance(body, dict) and isinstance(room_id, str)
        raw = body.get("servers")
        servers = [s for s in raw if isinstance(s, str) and is_valid_server_name(s)] if isinstance(raw, list) else []
        servers = list(dict.fromkeys(servers))[:MAX_REMOTE_SERVERS]
        # The alias's server is the likeliest resident: first if it says it is in the room.
        servers = [server, *(s for s in servers if s != server)] if server in servers else [*servers, server]
        return room_id, servers

    async def create_room(
        self, creator: str, room_alias: str | None, *, publish: bool, create: Callable[[], Awaitable[str]]
    ) -> str:
        """createRoom with ``room_alias_name`` and ``visibility``: ``create`` makes the room
        (sending the canonical alias event), once the alias is known to be free."""
        if room_alias is None:
            room_id = await create()
        else:
            self._our_alias(room_alias)
            async with self._alias_lock(room_alias):
                if await self.store.get_alias(room_alias) is not None:
                    raise AliasInUse(room_alias)
                room_id = await create()
                if not await self.store.create_alias(room_alias, room_id, creator):
                    log.warning("alias taken while its room was created",
                                extra={"room_alias": room_alias, "room_id": room_id})
        if publish:
            await self.store.set_published(room_id, True)
        return room_id

    # ------------------------------------------------------------------ published rooms

    async def get_visibility(self, room_id: str) -> str:
        await self._require_room(room_id)
        return "public" if await self.store.is_published(room_id) else "private"

    async def set_visibility(self, user_id: str, room_id: str, visibility: str) -> None:
        if visibility not in ("public", "private"):
            raise InvalidParam("visibility must be public or private")
        await self._require_room(room_id)
        if not await self.may_manage(user_id, room_id):
            raise NotAllowed("You may not change this room's visibility in the directory")
        await self.store.set_published(room_id, visibility == "public")

    async def public_rooms(
        self, *, limit: int | None = None, since: str | None = None, search: str | None = None,
        room_types: Sequence[str | None] | None = None,
    ) -> dict[str, Any]:
        """One page of our published room directory (PublicRoomsResponse)."""
        offset = parse_since(since)
        page = MAX_PUBLIC_ROOMS_PAGE if not limit or limit <= 0 else min(limit, MAX_PUBLIC_ROOMS_PAGE)
        published = [r for r in await self.store.published_rooms(self.server_name) if r.local_joined_members]
        stored = await self._events.get_events(eid for r in published for eid in r.state.values())
        found = [se.event for se in stored.values()]
        events = {e.event_id: e for e in served(found, await applied_redactions(self._events, found))}
        entries = [self._entry(r, {t: events[e] for t, e in r.state.items() if e in events})
                   for r in published]
        if search:
            term = search[:MAX_SEARCH_TERM].casefold()
            entries = [e for e in entries if any(
                isinstance(e.get(k), str) and term in e[k].casefold() for k in ("name", "topic", "canonical_alias"))]
        if room_types is not None:
            wanted = set(room_types)
            entries = [e for e in entries if e.get("room_type") in wanted]
        entries.sort(key=lambda e: (-e["num_joined_members"], e["room_id"]))
        out: dict[str, Any] = {"chunk": entries[offset:offset + page], "total_room_count_estimate": len(entries)}
        if offset + page < len(entries):
            out["next_batch"] = f"o{offset + page}"
        if offset > 0:
            out["prev_batch"] = f"o{max(0, offset - page)}"
        return out

    @staticmethod
    def _entry(room: PublishedRoom, state: Mapping[str, Event]) -> dict[str, Any]:
        def content(event_type: str) -> Mapping[str, Any]:
            event = state.get(event_type)
            return event.content if event is not None else {}

        entry: dict[str, Any] = {
            "room_id": room.room_id,
            "num_joined_members": room.joined_members,
            "world_readable": content("m.room.history_visibility").get("history_visibility") == "world_readable",
            "guest_can_join": content("m.room.guest_access").get("guest_access") == "can_join",
        }
        fields = {
            "name": content("m.room.name").get("name"),
            "topic": plain_topic(content("m.room.topic")),
            "canonical_alias": content(ALIAS_EVENT).get("alias"),
            "avatar_url": content("m.room.avatar").get("url"),
            "join_rule": content("m.room.join_rules").get("join_rule"),
            "room_type": content("m.room.create").get("type"),
        }
        entry.update({k: v for k, v in fields.items() if isinstance(v, str) and v})
        return entry

    async def remote_public_rooms(
        self, server: str, *, limit: int | None = None, since: str | None = None, search: str | None = None,
        room_types: Sequence[str | None] | None = None,
    ) -> dict[str, Any]:
        """One page of another server's published room directory (federation /publicRooms)."""
        if not is_valid_server_name(server):
            raise InvalidParam("server is not a server name")
        try:
            if search or room_types is not None:
                body: dict[str, Any] = {}
                if limit:
                    body["limit"] = limit
                if since:
                    body["since"] = since
                flt: dict[str, Any] = {}
                if search:
                    flt["generic_search_term"] = search
                if room_types is not None:
                    flt["room_types"] = list(room_types)
                body["filter"] = flt
                reply = await self._client.post_json(server, f"{V1}/publicRooms", body, timeout=self._timeout)
            else:
                query: dict[str, str | list[str]] = {}
                if limit:
                    query["limit"] = str(limit)
                if since:
                    query["since"] = since
                reply = await self._client.get_json(server, f"{V1}/publicRooms", query=query, timeout=self._timeout)
        except FederationRequestError as e:
            raise RemoteDirectoryFailed(f"could not read the room directory of {server}: {e}") from None
        if not isinstance(reply, dict) or not isinstance(reply.get("chunk"), list):
            raise RemoteDirectoryFailed(f"{server} sent a malformed room directory")
        chunk = [e for e in (sanitize_chunk_entry(x) for x in reply["chunk"][:MAX_REMOTE_CHUNK]) if e is not None]
        out: dict[str, Any] = {"chunk": chunk}
        for key in ("next_batch", "prev_batch"):
            if isinstance(reply.get(key), str):
                out[key] = reply[key]
        total = reply.get("total_room_count_estimate")
        if isinstance(total, int) and not isinstance(total, bool):
            out["total_room_count_estimate"] = total
        return out
