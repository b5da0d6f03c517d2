"""Spaces: the summary of a room we hold, its ``m.space.child`` children, who may see it,
and the federation answer of ``GET /hierarchy/{roomId}``.

A room summary is the spec's RoomSummary (the public rooms chunk's keys, ``room_type``,
``allowed_room_ids``, ``encryption``, ``room_version``) read from the room's current state,
redactions applied. A child is an ``m.space.child`` state event whose state key is a room
ID and whose ``via`` is a non-empty list of server names; children are ordered as the
spec says: by a valid ``order`` first, then the child event's ``origin_server_ts``, then
the room ID.

Who may see a room (the spec's "could feasibly peek/join"):

- anyone, when its join rule is ``public``, ``knock`` or ``knock_restricted``, or its
  history is ``world_readable``;
- a user who is joined or invited; a server with a user joined;
- for a ``restricted`` (or ``knock_restricted``) room, a user joined to one of the
  allowed rooms, a server with a user joined to one of them.

The federation answer (``for_server``) holds the room (404 when we do not hold it or the
requesting server may not see it), its children we hold and that server may see, and in
``inaccessible_children`` those we hold that it may not; children we do not hold are left
out. At most ``MAX_CHILDREN`` children are considered.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from homeserver.events.event import Event, StateKey
from homeserver.events.identifiers import is_valid_server_name, server_name_of
from homeserver.rooms.directory import CHUNK_KEYS, plain_topic, sanitize_chunk_entry
from homeserver.rooms.errors import RoomNotFound
from homeserver.rooms.redactions import applied_redactions, served
from homeserver.rooms.service import RoomService
from homeserver.storage.events import EventStore

SPACE_CHILD = "m.space.child"
SPACE = "m.space"
MAX_CHILDREN = 500
MAX_VIA = 10
# Allowed rooms of a restricted join rule looked at, at most, to decide who may see a room.
MAX_ALLOWED_CHECKED = 50
MAX_ORDER = 50
MEGOLM = "m.megolm.v1.aes-sha2"
OPEN_JOIN_RULES = frozenset({"public", "knock", "knock_restricted"})
RESTRICTED = frozenset({"restricted", "knock_restricted"})
_SUMMARY_TYPES = (
    "m.room.create", "m.room.name", "m.room.topic", "m.room.avatar", "m.room.canonical_alias",
    "m.room.join_rules", "m.room.history_visibility", "m.room.guest_access", "m.room.encryption",
)
_EXTRA_KEYS: dict[str, type] = {"encryption": str, "room_version": str}


def valid_via(content: Mapping[str, Any]) -> list[str]:
    via = content.get("via")
    if not isinstance(via, list):
        return []
    return [s for s in via if isinstance(s, str) and is_valid_server_name(s)][:MAX_VIA]


def child_sort_key(child: Mapping[str, Any]) -> tuple[int, str, int, str]:
    content = child.get("content")
    order = content.get("order") if isinstance(content, dict) else None
    valid = isinstance(order, str) and len(order) <= MAX_ORDER and all(0x20 <= ord(c) <= 0x7E for c in order)
    ts = child.get("origin_server_ts")
    return (
        0 if valid else 1, order if valid and isinstance(order, str) else "",
        ts if isinstance(ts, int) else 0, str(child.get("state_key")),
    )


def sanitize_child(entry: Any) -> dict[str, Any] | None:
    """A ``children_state`` entry as the spec shapes it (stripped state with
    ``origin_server_ts``) with a usable ``via``; None otherwise."""
    if not isinstance(entry, dict) or entry.get("type") != SPACE_CHILD:
        return None
    state_key, content, sender, ts = (entry.get(k) for k in ("state_key", "content", "sender", "origin_server_ts"))
    if not isinstance(state_key, str) or not state_key.startswith("!") or len(state_key.encode()) > 255:
        return None
    if not isinstance(content, dict) or not valid_via(content) or not isinstance(sender, str):
        return None
    if not isinstance(ts, int) or isinstance(ts, bool):
        return None
    return {"type": SPACE_CHILD, "state_key": state_key, "content": content, "sender": sender,
            "origin_server_ts": ts}


def ordered_children(children: Iterable[dict[str, Any]], suggested_only: bool) -> list[dict[str, Any]]:
    kept = [c for c in children if not suggested_only or c["content"].get("suggested") is True]
    return sorted(kept, key=child_sort_key)[:MAX_CHILDREN]


def sanitize_summary(entry: Any) -> dict[str, Any] | None:
    """A room summary from another server, cut to the spec's keys and types."""
    out = sanitize_chunk_entry(entry)
    if out is None:
        return None
    assert isinstance(entry, dict)
    for key, kind in _EXTRA_KEYS.items():
        if isinstance(entry.get(key), kind):
            out[key] = entry[key]
    allowed = entry.get("allowed_room_ids")
    if isinstance(allowed, list):
        out["allowed_room_ids"] = [r for r in allowed if isinstance(r, str) and r.startswith("!")][:MAX_CHILDREN]
    return out


def open_to_all(summary: Mapping[str, Any]) -> bool:
    return summary.get("join_rule") in OPEN_JOIN_RULES or summary.get("world_readable") is True


class SpaceHierarchy:
    def __init__(self, server_name: str, rooms: RoomService) -> None:
        self.server_name = server_name
        self.rooms = rooms
        self._store: EventStore = rooms.store

    async def held(self, room_id: str) -> bool:
        """Whether we hold the room's live state (one of our users is joined)."""
        return await self.rooms.participating(room_id)

    async def local(self, room_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        """The summary and the children (all, ordered) of a room we hold; None otherwise."""
        if not await self.held(room_id):
            return None
        version = await self._store.get_room_version(room_id)
        state = await self._store.get_current_state_ids(room_id)
        if version is None or not state:
            return None
        wanted = {k: e for k, e in state.items() if (k[0] in _SUMMARY_TYPES and k[1] == "") or k[0] == SPACE_CHILD}
        stored = await self._store.get_events(wanted.values())
        found = [s.event for s in stored.values()]
        events = {e.event_id: e for e in served(found, await applied_redactions(self._store, found))}
        by_key: dict[StateKey, Event] = {k: events[e] for k, e in wanted.items() if e in events}

        def content(event_type: str) -> Mapping[str, Any]:
            event = by_key.get((event_type, ""))
            return event.content if event is not None else {}

        members = await self._store.joined_members(room_id)
        topic = plain_topic(content("m.room.topic"))
        entry: dict[str, Any] = {
            "room_id": room_id,
            "num_joined_members": len(members),
            "world_readable": content("m.room.history_visibility").get("history_visibility") == "world_readable",
            "guest_can_join": content("m.room.guest_access").get("guest_access") == "can_join",
            "room_version": version.identifier,
        }
        fields = {
            "name": content("m.room.name").get("name"),
            "topic": topic,
            "canonical_alias": content("m.room.canonical_alias").get("alias"),
            "avatar_url": content("m.room.avatar").get("url"),
            "join_rule": content("m.room.join_rules").get("join_rule"),
            "room_type": content("m.room.create").get("type"),
        }
        entry.update({k: v for k, v in fields.items() if isinstance(v, CHUNK_KEYS[k]) and v})
        if content("m.room.encryption").get("algorithm") == MEGOLM:
            entry["encryption"] = MEGOLM
        if entry.get("join_rule") in RESTRICTED:
            entry["allowed_room_ids"] = allowed_rooms(content("m.room.join_rules"))
        children = [
            c for c in (
                sanitize_child({"type": SPACE_CHILD, "state_key": k[1], "content": dict(e.content),
                                "sender": e.sender, "origin_server_ts": e.origin_server_ts})
                for k, e in by_key.items() if k[0] == SPACE_CHILD
            ) if c is not None
        ]
        return entry, ordered_children(children, False)

    # ------------------------------------------------------------------ who may see

    async def server_may_see(self, server: str, room_id: str, summary: Mapping[str, Any]) -> bool:
        if open_to_all(summary) or await self._store.has_joined_member_of(room_id, server):
            return True
        # A server whose user is invited may preview the room (the invite's space preview).
        if any(m == "invite" and server_name_of(u) == server
               for u, _, m in await self._store.member_memberships(room_id)):
            return True
        if summary.get("join_rule") in RESTRICTED:
            for allowed in list(summary.get("allowed_room_ids", ()))[:MAX_ALLOWED_CHECKED]:
                if await self._store.has_joined_member_of(allowed, server):
                    return True
        return False

    async def user_may_see(self, user_id: str, room_id: str, summary: Mapping[str, Any]) -> bool:
        """Whether a user of ours may see a room (held here or summarised by another
        server)."""
        if open_to_all(summary):
            return True
        membership, _ = await self.rooms.get_membership(user_id, room_id)
        if membership in ("join", "invite"):
            return True
        if summary.get("join_rule") in RESTRICTED:
            for allowed in list(summary.get("allowed_room_ids", ()))[:MAX_ALLOWED_CHECKED]:
                if isinstance(allowed, str) and (await self.rooms.get_membership(user_id, allowed))[0] == "join":
                    return True
        return False

    # ------------------------------------------------------------------ federation

    async def for_server(self, server: str, room_id: str, suggested_only: bool) -> dict[str, Any]:
        """The answer to ``GET /_matrix/federation/v1/hierarchy/{roomId}`` from ``server``."""
        found = await self.local(room_id)
        if found is None or not await self.server_may_see(server, room_id, found[0]):
            raise RoomNotFound(room_id)
        summary, children_state = found
        children_state = ordered_children(children_state, suggested_only)
        children: list[dict[str, Any]] = []
        inaccessible: list[str] = []
        for child in children_state:
            child_id = child["state_key"]
            held = await self.local(child_id)
            if held is None:
                continue  # we cannot tell: left out
            if await self.server_may_see(server, child_id, held[0]):
                children.append({**held[0], "children_state": ordered_children(held[1], suggested_only)})
            else:
                inaccessible.append(child_id)
        return {
            "room": {**summary, "children_state": children_state},
            "children": children,
            "inaccessible_children": inaccessible,
        }


def allowed_rooms(join_rules: Mapping[str, Any]) -> list[str]:
    allow = join_rules.get("allow")
    if not isinstance(allow, list):
        return []
    return [c["room_id"] for c in allow if isinstance(c, dict) and c.get("type") == "m.room_membership"
            and isinstance(c.get("room_id"), str)][:MAX_CHILDREN]
