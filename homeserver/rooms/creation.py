"""What a new room's first events contain: pure functions, no I/O.

``plan_room`` turns a createRoom request into the create event's content and the ordered
list of state events that follow it, per the client-server spec's createRoom sequence:
1. m.room.create, 2. the creator's join, 3. power levels (``power_level_content_override``
applied), 4. the canonical alias (``room_alias_name``), 5. the preset's join rules, history
visibility and guest access, 6. ``initial_state``, 7. name and topic, 8. invites.
Room version 12: creators have infinite power, so they are not listed in ``users``, the
tombstone level is above ``state_default``, and ``trusted_private_chat`` invitees become
``additional_creators``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from homeserver.events.identifiers import is_valid_user_id
from homeserver.events.versions import RoomVersion
from homeserver.rooms.errors import BadRoomRequest

PRESETS: dict[str, dict[str, str]] = {
    "private_chat": {"join_rule": "invite", "history_visibility": "shared", "guest_access": "can_join"},
    "trusted_private_chat": {"join_rule": "invite", "history_visibility": "shared", "guest_access": "can_join"},
    "public_chat": {"join_rule": "public", "history_visibility": "shared", "guest_access": "forbidden"},
}
# Types createRoom sets itself: not accepted in initial_state.
RESERVED_INITIAL_STATE = frozenset({"m.room.create", "m.room.member"})


@dataclass(frozen=True, slots=True)
class StateDraft:
    type: str
    state_key: str
    content: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RoomPlan:
    create_content: dict[str, Any]
    state: list[StateDraft] = field(default_factory=list)  # after the creator's join
    invites: list[str] = field(default_factory=list)


def default_power_levels(version: RoomVersion, creator: str, preset: str, invitees: Sequence[str]) -> dict[str, Any]:
    """The power levels a new room starts with (before the override)."""
    users: dict[str, int] = {}
    if not version.creators_have_infinite_power:
        users[creator] = 100
        if preset == "trusted_private_chat":
            # Invitees get the creator's level (room v12: they are additional creators).
            users.update(dict.fromkeys(invitees, 100))
    tombstone = 150 if version.creators_have_infinite_power else 100
    return {
        "users": users,
        "users_default": 0,
        "events": {
            "m.room.name": 50,
            "m.room.power_levels": 100,
            "m.room.history_visibility": 100,
            "m.room.canonical_alias": 50,
            "m.room.avatar": 50,
            "m.room.tombstone": tombstone,
            "m.room.server_acl": 100,
            "m.room.encryption": 100,
        },
        "events_default": 0,
        "state_default": 50,
        "ban": 50,
        "kick": 50,
        "redact": 50,
        "invite": 0 if preset in ("private_chat", "trusted_private_chat") else 50,
    }


def plan_room(
    version: RoomVersion,
    creator: str,
    *,
    preset: str | None = None,
    visibility: str = "private",
    name: str | None = None,
    topic: str | None = None,
    invite: Sequence[str] = (),
    initial_state: Sequence[Mapping[str, Any]] = (),
    creation_content: Mapping[str, Any] | None = None,
    power_level_content_override: Mapping[str, Any] | None = None,
    canonical_alias: str | None = None,
) -> RoomPlan:
    """The content of the create event and the state events after the creator's join."""
    if visibility not in ("private", "public"):
        raise BadRoomRequest(f"unknown visibility {visibility!r}")
    preset = preset or ("public_chat" if visibility == "public" else "private_chat")
    if preset not in PRESETS:
        raise BadRoomRequest(f"unknown preset {preset!r}")
    invitees = list(dict.fromkeys(invite))
    for user_id in invitees:
        if not isinstance(user_id, str) or not is_valid_user_id(user_id):
            raise BadRoomRequest(f"invalid user ID to invite: {user_id!r}")
    if creator in invitees:
        raise BadRoomRequest("the creator cannot invite themself")

    # 1. The create event.
    create: dict[str, Any] = dict(creation_content or {})
    create["room_version"] = version.identifier
    if version.create_uses_sender_as_creator:
        create.pop("creator", None)
    else:
        create["creator"] = creator
    if version.creators_have_infinite_power:
        extra = create.get("additional_creators", [])
        if not isinstance(extra, list) or not all(is_valid_user_id(u) for u in extra):
            raise BadRoomRequest("additional_creators must be a list of user IDs")
        if preset == "trusted_private_chat":
            extra = [*extra, *invitees]
        extra = [u for u in dict.fromkeys(extra) if u != creator]
        if extra:
            create["additional_creators"] = extra
        else:
            create.pop("additional_creators", None)
    else:
        create.pop("additional_creators", None)

    # 6. (read first: initial_state may replace the defaults of 3 and 5)
    initial: dict[tuple[str, str], dict[str, Any]] = {}
    for entry in initial_state:
        if not isinstance(entry, Mapping):
            raise BadRoomRequest("initial_state entries must be objects")
        etype, state_key, content = entry.get("type"), entry.get("state_key", ""), entry.get("content")
        if not isinstance(etype, str) or not isinstance(state_key, str) or not isinstance(content, Mapping):
            raise BadRoomRequest("initial_state entries need type, state_key and content")
        if etype in RESERVED_INITIAL_STATE:
            raise BadRoomRequest(f"{etype} cannot be set in initial_state")
        initial[(etype, state_key)] = dict(content)

    state: list[StateDraft] = []
    # 3. Power levels: initial_state's if given, else the defaults; then the override.
    pl = initial.pop(("m.room.power_levels", ""), None) or default_power_levels(
        version, creator, preset, invitees
    )
    if power_level_content_override is not None:
        if not isinstance(power_level_content_override, Mapping):
            raise BadRoomRequest("power_level_content_override must be an object")
        pl.update(power_level_content_override)
    state.append(StateDraft("m.room.power_levels", "", pl))

    # 4. The canonical alias (createRoom's room_alias_name, reserved by the caller).
    if canonical_alias is not None:
        state.append(StateDraft("m.room.canonical_alias", "", {"alias": canonical_alias}))

    # 5. The preset's events, unless initial_state sets them.
    settings = PRESETS[preset]
    for etype, key, value in (
        ("m.room.join_rules", "join_rule", settings["join_rule"]),
        ("m.room.history_visibility", "history_visibility", settings["history_visibility"]),
        ("m.room.guest_access", "guest_access", settings["guest_access"]),
    ):
        if (etype, "") not in initial:
            state.append(StateDraft(etype, "", {key: value}))

    # 6. initial_state, in order; name and topic of 7 replace any given here.
    if name is not None:
        initial.pop(("m.room.name", ""), None)
    if topic is not None:
        initial.pop(("m.room.topic", ""), None)
    state.extend(StateDraft(t, sk, c) for (t, sk), c in initial.items())

    # 7. Name and topic.
    if name is not None:
        state.append(StateDraft("m.room.name", "", {"name": name}))
    if topic is not None:
        state.append(StateDraft("m.room.topic", "", {
            "topic": topic, "m.topic": {"m.text": [{"mimetype": "text/plain", "body": topic}]},
        }))
    # 8. Invites (the caller sends them: remote ones need a handshake).
    return RoomPlan(create, state, invitees)


def invite_content(is_direct: bool) -> dict[str, Any]:
    return {"membership": "invite", "is_direct": True} if is_direct else {"membership": "invite"}
