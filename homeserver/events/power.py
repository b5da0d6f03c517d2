"""What the authorization rules read from a state map: power levels, creators, memberships.

Pure helpers shared by the auth rules (``events/auth.py``) and state resolution.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from homeserver.events.event import Event, StateKey
from homeserver.events.versions import RoomVersion

AuthState = Mapping[StateKey, Event]
PowerLevel = int | float  # float only for math.inf (room v12 creators)

CREATE: StateKey = ("m.room.create", "")
POWER_LEVELS: StateKey = ("m.room.power_levels", "")
JOIN_RULES: StateKey = ("m.room.join_rules", "")

_PL_SCALARS = ("users_default", "events_default", "state_default", "ban", "redact", "kick",
               "invite")
_PL_MAPS = ("events", "notifications")
_SCALAR_DEFAULTS = {"users_default": 0, "events_default": 0, "state_default": 50, "ban": 50,
                    "redact": 50, "kick": 50, "invite": 0}


def _version_of(auth_state: AuthState) -> RoomVersion | None:
    create = auth_state.get(CREATE)
    if create is not None:
        return create.room_version
    for event in auth_state.values():
        return event.room_version
    return None


def get_creators(auth_state: AuthState) -> set[str]:
    """The room creators: the create event's sender (content ``creator`` before room v11),
    plus ``additional_creators`` in room v12."""
    create = auth_state.get(CREATE)
    if create is None:
        return set()
    version = create.room_version
    if version.create_uses_sender_as_creator:
        creators = {create.sender}
    else:
        creator = create.content.get("creator")
        creators = {creator} if isinstance(creator, str) else set()
    if version.creators_have_infinite_power:
        extra = create.content.get("additional_creators")
        if isinstance(extra, list):
            creators.update(u for u in extra if isinstance(u, str))
    return creators


# rooms/fragments/v1-stringy-power-levels.md: optional whitespace, one sign, base 10 digits
_STRING_LEVEL = re.compile(r"\s*[+-]?[0-9]+\s*")


def parse_level(value: object, version: RoomVersion) -> int | None:
    """A power level value as an integer, or None if it is not one in ``version``.

    Room 10 and later: integers only. Rooms 1-9 also take a string holding an integer
    (``" +0100 "``), and rooms 1-5, which do not enforce canonical JSON, a finite float,
    truncated (``50.57`` is 50). Booleans are never levels.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if version.strict_integer_power_levels:
        return None
    if isinstance(value, str):
        return int(value) if _STRING_LEVEL.fullmatch(value) else None
    if isinstance(value, float) and not version.strict_canonical_json and math.isfinite(value):
        return int(value)
    return None


def _level_or(value: object, default: int, version: RoomVersion) -> int:
    level = parse_level(value, version)
    return default if level is None else level


def _pl_event(auth_state: AuthState) -> Event | None:
    return auth_state.get(POWER_LEVELS)


def _pl_content(auth_state: AuthState) -> Mapping[str, Any] | None:
    event = auth_state.get(POWER_LEVELS)
    return None if event is None else event.content


def get_power_level(user_id: str, auth_state: AuthState) -> PowerLevel:
    """``user_id``'s power level: infinite for room v12 creators; else ``users`` /
    ``users_default``; with no power levels event, 100 for the creator and 0 for others."""
    version = _version_of(auth_state)
    if version is not None and version.creators_have_infinite_power:
        if user_id in get_creators(auth_state):
            return math.inf
    event = _pl_event(auth_state)
    if event is None:
        return 100 if user_id in get_creators(auth_state) else 0
    content, pl_version = event.content, event.room_version
    default = _level_or(content.get("users_default"), 0, pl_version)
    users = content.get("users")
    if isinstance(users, dict) and user_id in users:
        return _level_or(users[user_id], default, pl_version)
    return default


def named_level(auth_state: AuthState, name: str) -> int:
    """The level a named action needs (``invite``, ``kick``, ``ban``, ``redact``)."""
    return _named_level(auth_state, name)


def _named_level(auth_state: AuthState, name: str) -> int:
    """``invite``, ``kick``, ``ban``, ``redact``, ``*_default`` with their spec defaults."""
    pl = _pl_event(auth_state)
    if pl is None:
        return _SCALAR_DEFAULTS[name]
    return _level_or(pl.content.get(name), _SCALAR_DEFAULTS[name], pl.room_version)


def _required_level(event: Event, auth_state: AuthState) -> int:
    pl = _pl_event(auth_state)
    events = None if pl is None else pl.content.get("events")
    if pl is not None and isinstance(events, dict) and event.type in events:
        level = parse_level(events[event.type], pl.room_version)
        if level is not None:
            return level
    if event.is_state:
        return _named_level(auth_state, "state_default")
    return _named_level(auth_state, "events_default")


def _membership(auth_state: AuthState, user_id: str) -> str | None:
    event = auth_state.get(("m.room.member", user_id))
    return None if event is None else event.membership


def is_power_event(event: Event) -> bool:
    """State resolution's power events: create, power levels, join rules, and member
    leave/ban events whose sender is not the target (kicks and bans)."""
    if not event.is_state:
        return False
    if event.type in ("m.room.create", "m.room.power_levels", "m.room.join_rules"):
        return event.state_key == ""
    if event.type == "m.room.member":
        return event.membership in ("leave", "ban") and event.sender != event.state_key
    return False
