"""Room upgrades (``POST /rooms/{roomId}/upgrade``), as the spec describes them:

1. The user must be joined and have the power to send ``m.room.tombstone`` in the old room.
2. A new room of the asked version, whose create event names the old room as its
   ``predecessor`` (and keeps its ``type``), with the old room's ``COPIED_STATE``, its space
   children and its bans (at most ``MAX_COPIED`` of each, as Synapse copies them), its power
   levels (users' levels kept; in room v12 and later the upgrading user, a creator, is left
   out of ``users``; before, they are raised to the highest level any of the copied events
   needs while the room is set up, and put back at their old level after; a v12 room's
   creators, whose power was unlimited, keep that level in an older version's room).
3. Users able to follow: when the old room is not public, its joined members are invited to
   the new room (the choice made here; Synapse instead sets a restricted join rule naming
   the old room: inviting works in every room version and needs no restricted-join
   authorisation by a resident server). At most ``MAX_INVITED``, ours first, other
   servers' ``INVITE_CONCURRENCY`` at a time within ``INVITE_SECONDS`` (``invite_members``).
4. Our aliases of the old room move to the new room, and the canonical alias with them
   (removed from the old room); a room published in our directory is published in its
   place.
5. The old room gets an ``m.room.tombstone`` naming the replacement, then power levels
   that need 50 (or ``users_default`` + 1, whichever is higher) to send events or invite.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from homeserver.events.errors import UnsupportedRoomVersion
from homeserver.events.event import Event, StateKey
from homeserver.events.identifiers import server_name_of
from homeserver.events.power import get_creators, get_power_level, parse_level
from homeserver.events.versions import RoomVersion, get_room_version
from homeserver.rooms.directory import RoomDirectory
from homeserver.rooms.errors import NotAllowed, RoomError, UnsupportedVersion
from homeserver.rooms.service import RoomService

log = logging.getLogger(__name__)

COPIED_STATE = (
    "m.room.server_acl", "m.room.encryption", "m.room.name", "m.room.topic", "m.room.avatar",
    "m.room.join_rules", "m.room.guest_access", "m.room.history_visibility", "m.room.canonical_alias",
)
SPACE_CHILD = "m.space.child"
# At most this many space children, and this many bans, are carried over.
MAX_COPIED = 1000
# Members of the old room invited into the new one: how many, how many remote handshakes at
# once, and how long the remote ones may take in all.
MAX_INVITED = 1000
INVITE_CONCURRENCY = 10
INVITE_SECONDS = 30.0
TOMBSTONE = "m.room.tombstone"
POWER_LEVELS = "m.room.power_levels"


def _level(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


LEVEL_KEYS = ("ban", "events_default", "invite", "kick", "redact", "state_default", "users_default")
LEVEL_MAPS = ("events", "users", "notifications")
MAX_LEVEL = 2**53 - 1  # canonical JSON's integers


def integer_levels(pl: Mapping[str, Any], version: RoomVersion) -> dict[str, Any]:
    """Power levels with every level an integer, as rooms 10 and later require: the levels
    ``version`` (the old room's) reads from a string (``"50"``) or a float become integers;
    what it does not read as a level (or what canonical JSON cannot hold) is left out, so
    the default applies, as it did in the old room. Other keys are kept as they are."""
    def level(value: Any) -> int | None:
        n = parse_level(value, version)
        return n if n is not None and -MAX_LEVEL <= n <= MAX_LEVEL else None

    out: dict[str, Any] = {}
    for key, value in pl.items():
        if key in LEVEL_MAPS:
            if isinstance(value, dict):
                out[key] = {k: n for k, v in value.items() if (n := level(v)) is not None}
        elif key in LEVEL_KEYS:
            n = level(value)
            if n is not None:
                out[key] = n
        else:
            out[key] = value
    return out


def required_level(pl: Mapping[str, Any], event_type: str) -> int:
    """The level a state event of ``event_type`` needs under power levels ``pl``."""
    events = pl.get("events")
    if isinstance(events, dict) and event_type in events:
        return _level(events[event_type], 50)
    return _level(pl.get("state_default"), 50)


def restricted_levels(pl: Mapping[str, Any]) -> dict[str, Any]:
    """The old room's power levels once tombstoned: sending and inviting need 50 (or
    ``users_default`` + 1)."""
    out = dict(pl)
    needed = max(50, _level(pl.get("users_default"), 0) + 1)
    out["events_default"] = max(_level(pl.get("events_default"), 0), needed)
    out["invite"] = max(_level(pl.get("invite"), 0), needed)
    return out


async def upgrade_room(
    rooms: RoomService, directory: RoomDirectory | None, user_id: str, room_id: str, new_version: str,
) -> str:
    """Upgrade ``room_id`` to ``new_version``; return the new room's ID."""
    try:
        version = get_room_version(new_version)
    except UnsupportedRoomVersion:
        raise UnsupportedVersion(new_version) from None
    membership, _ = await rooms.get_membership(user_id, room_id)
    if membership != "join":
        raise NotAllowed(f"{user_id} is not in room {room_id}")
    state = await rooms.get_current_state(room_id)
    auth_state: dict[StateKey, Event] = {
        k: v for k, v in state.items() if k in (("m.room.create", ""), (POWER_LEVELS, ""), ("m.room.member", user_id))
    }
    old_pl_event = state.get((POWER_LEVELS, ""))
    old_rules = await rooms.store.get_room_version(room_id) or version
    # Levels as integers (a room before version 10 may hold "50"), read as the old room does.
    old_pl = integer_levels(old_pl_event.content, old_rules) if old_pl_event is not None else {}
    if get_power_level(user_id, auth_state) < required_level(old_pl, TOMBSTONE):
        raise NotAllowed("You may not upgrade this room (m.room.tombstone needs more power)")

    copied: list[dict[str, Any]] = [
        {"type": t, "state_key": "", "content": dict(state[(t, "")].content)}
        for t in COPIED_STATE if (t, "") in state and state[(t, "")].content
    ]
    # A space keeps its children (as Synapse does).
    copied += [
        {"type": t, "state_key": sk, "content": dict(e.content)}
        for (t, sk), e in sorted(state.items()) if t == SPACE_CHILD and e.content
    ][:MAX_COPIED]
    join_rule = state[("m.room.join_rules", "")].content.get("join_rule") \
        if ("m.room.join_rules", "") in state else "invite"
    # Power levels: the users' levels kept; the upgrader able to send everything copied.
    new_pl = dict(old_pl)
    users = dict(new_pl.get("users") or {}) if isinstance(new_pl.get("users"), dict) else {}
    final_pl: dict[str, Any] | None = None
    if version.creators_have_infinite_power:
        users.pop(user_id, None)
    else:
        needed = max([100, required_level(old_pl, POWER_LEVELS),
                      *(required_level(old_pl, str(c["type"])) for c in copied)])
        current = _level(users.get(user_id), _level(old_pl.get("users_default"), 0))
        if old_rules.creators_have_infinite_power:
            # The old room's creators had unlimited power, outside ``users``: they keep the
            # top level in a room without it (else the upgrader would lock themself out).
            for creator in get_creators(auth_state):
                users[creator] = max(needed, _level(users.get(creator), 0))
        elif current < needed:
            final_pl = {**new_pl, "users": dict(users)}
            users[user_id] = needed
    new_pl["users"] = users
    create = state.get(("m.room.create", ""))
    extremities = await rooms.store.get_forward_extremities(room_id)
    creation: dict[str, Any] = {"predecessor": {"room_id": room_id, **(
        {"event_id": extremities[0]} if extremities else {})}}
    if create is not None and isinstance(create.content.get("type"), str):
        creation["type"] = create.content["type"]
    invitees: list[str] = []
    if join_rule != "public":
        invitees = [u for u in await rooms.store.joined_members(room_id) if u != user_id]
    new_room = await rooms.create_room(
        user_id, room_version=version.identifier, preset="private_chat",
        initial_state=[{"type": POWER_LEVELS, "state_key": "", "content": new_pl}, *copied],
        creation_content=creation,
    )
    await invite_members(rooms, user_id, new_room, invitees)
    # Bans carry over (as Synapse does), while the upgrader still has every power needed.
    banned = [sk for (t, sk), e in sorted(state.items()) if t == "m.room.member" and e.membership == "ban"]
    for target in banned[:MAX_COPIED]:
        reason = state[("m.room.member", target)].content.get("reason")
        try:
            await rooms.ban(user_id, new_room, target, reason if isinstance(reason, str) else None)
        except RoomError as e:
            log.info("ban not carried over", extra={"room_id": new_room, "target": target, "reason": str(e)})
    if final_pl is not None:
        await rooms.send_event(user_id, new_room, POWER_LEVELS, final_pl, "")
    if directory is not None:
        await _move_aliases(rooms, directory, user_id, room_id, new_room, state)
    await rooms.send_event(user_id, room_id, TOMBSTONE, {
        "body": "This room has been replaced", "replacement_room": new_room}, "")
    try:
        await rooms.send_event(user_id, room_id, POWER_LEVELS, restricted_levels(old_pl), "")
    except RoomError as e:  # the upgrader may tombstone but not change the power levels
        log.info("old room's power levels left as they were", extra={"room_id": room_id, "reason": str(e)})
    log.info("room upgraded", extra={"room_id": room_id, "new_room_id": new_room, "version": version.identifier})
    return new_room


async def invite_members(rooms: RoomService, user_id: str, room_id: str, invitees: Sequence[str]) -> None:
    """Invite the old room's members into the new one, bounded: at most ``MAX_INVITED``,
    ours first (no handshake), then other servers' users ``INVITE_CONCURRENCY`` at a time,
    all within ``INVITE_SECONDS`` (each remote invite waits for its server to countersign:
    one by one, a thousand members on slow servers held the request for hours)."""
    server = server_name_of(user_id)
    chosen = sorted(invitees, key=lambda u: server_name_of(u) != server)[:MAX_INVITED]
    slots = asyncio.Semaphore(INVITE_CONCURRENCY)

    async def invite(target: str) -> None:
        async with slots:
            try:
                await rooms.invite(user_id, room_id, target)
            except RoomError as e:
                log.info("member not invited to the new room", extra={"room_id": room_id, "target": target,
                                                                       "reason": str(e)})

    local = [u for u in chosen if server_name_of(u) == server]
    for target in local:
        await invite(target)
    tasks = [asyncio.create_task(invite(u)) for u in chosen[len(local):]]
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=INVITE_SECONDS)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    if pending:
        log.info("members left uninvited: their servers were too slow", extra={"room_id": room_id,
                                                                               "count": len(pending)})


async def _move_aliases(
    rooms: RoomService, directory: RoomDirectory, user_id: str, old: str, new: str,
    state: Mapping[StateKey, Event],
) -> None:
    store = directory.store
    for alias in await store.aliases_for_room(old):
        record = await store.get_alias(alias)
        if record is None or not await store.delete_alias(alias):
            continue
        await store.create_alias(alias, new, record.creator)
    canonical = state.get(("m.room.canonical_alias", ""))
    if canonical is not None and canonical.content:
        try:
            await rooms.send_event(user_id, old, "m.room.canonical_alias", {}, "")
        except RoomError as e:
            log.info("old room's canonical alias left", extra={"room_id": old, "reason": str(e)})
    if await store.is_published(old):
        await store.set_published(new, True)
        await store.set_published(old, False)
