"""The authorization rules of room versions 1 to 12, and the auth events selection.

``check_auth_rules`` runs an event against a state map and raises AuthError naming the
spec's rule number for the event's room version (``events/rulenum.py``); the member rules
are in ``events/auth_member.py``. The rules differ by version through flags only: rule 4
for ``m.room.aliases`` (rooms 1-5), rule 11 for redactions (rooms 1-2), power levels as
strings or floats (``power.parse_level``, rooms 1-9), ``notifications`` (room 6+),
knocking (7+), restricted joins (8+), ``knock_restricted`` (10+), creators (11, 12).
Signatures are the caller's business.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeGuard

from homeserver.events.auth_member import check_member
from homeserver.events.errors import AuthError, EventFormatError, UnsupportedRoomVersion
from homeserver.events.event import Event, StateKey
from homeserver.events.format import check_additional_creators
from homeserver.events.identifiers import is_valid_user_id, server_name_of
from homeserver.events.power import (
    _PL_MAPS,
    _PL_SCALARS,
    CREATE,
    JOIN_RULES,
    POWER_LEVELS,
    AuthState,
    PowerLevel,
    _membership,
    _named_level,
    _required_level,
    get_creators,
    get_power_level,
    parse_level,
)
from homeserver.events.rulenum import reject
from homeserver.events.versions import KNOWN_ROOM_VERSIONS, RoomVersion, get_room_version

# ---------------------------------------------------------------------------------------
# auth events selection and rule 2 (v12: 3)
# ---------------------------------------------------------------------------------------

def _infer_version(pdu: Mapping[str, Any]) -> RoomVersion:
    """For a bare PDU: v12-shaped room IDs (no domain) imply the v12 selection rules."""
    room_id = pdu.get("room_id")
    if room_id is None or (isinstance(room_id, str) and ":" not in room_id):
        return KNOWN_ROOM_VERSIONS["12"]
    return KNOWN_ROOM_VERSIONS["11"]


def auth_types_for_event(
    event: Event | Mapping[str, Any], version: RoomVersion | None = None
) -> set[StateKey]:
    """The (type, state_key) pairs the auth events selection algorithm picks for ``event``.

    For a bare PDU dict pass ``version``; without it, a room ID without a domain is taken
    as room v12 (create not selected) and any other as a pre-v12 room (create selected).
    """
    if isinstance(event, Event):
        pdu: Mapping[str, Any] = event.pdu
        version = event.room_version
    else:
        pdu = event
        if version is None:
            version = _infer_version(pdu)
    event_type = pdu.get("type")
    state_key = pdu.get("state_key")
    if event_type == "m.room.create" and state_key == "":
        return set()
    sender = pdu.get("sender")
    wanted: set[StateKey] = {POWER_LEVELS}
    if not version.create_event_implied_in_auth:
        wanted.add(CREATE)
    if isinstance(sender, str):
        wanted.add(("m.room.member", sender))
    content = pdu.get("content")
    if event_type == "m.room.member" and isinstance(state_key, str) and isinstance(content, dict):
        membership = content.get("membership")
        wanted.add(("m.room.member", state_key))
        if membership in ("join", "invite", "knock"):
            wanted.add(JOIN_RULES)
        if membership == "invite":
            tpi = content.get("third_party_invite")
            if isinstance(tpi, dict):
                signed = tpi.get("signed")
                if isinstance(signed, dict) and isinstance(signed.get("token"), str):
                    wanted.add(("m.room.third_party_invite", signed["token"]))
        if membership == "join" and version.restricted_joins:
            via = content.get("join_authorised_via_users_server")
            if isinstance(via, str):
                wanted.add(("m.room.member", via))
    return wanted


def check_auth_events_shape(event: Event, auth_events: Sequence[Event]) -> None:
    """Rule 2 (room v12: rule 3) on the cited ``auth_events`` themselves: no duplicate
    (type, state_key), nothing outside the selection, same room, create cited (v10, v11)
    or not cited (v12). Whether an auth event was rejected (2.3) is the caller's check."""
    version = event.room_version
    if event.type == "m.room.create" and event.state_key == "":
        return  # rule 1 decides create events before rule 2 applies
    wanted = auth_types_for_event(event)
    seen: set[StateKey] = set()
    for auth_event in auth_events:
        if not auth_event.is_state:
            raise reject(event, "2.2", f"auth event {auth_event.event_id} is not a state event")
        key = auth_event.state_tuple
        # 2.1: duplicate entries for a (type, state_key) pair
        if key in seen:
            raise reject(event, "2.1", f"duplicate auth events for {key}")
        seen.add(key)
        # 2.2: entries the auth events selection would not pick (v12: never the create)
        if key not in wanted:
            raise reject(event, "2.2", f"auth event {key} is not selected for this event")
        # 2.5: every auth event is in the same room
        if auth_event.room_id != event.room_id:
            raise reject(event, "2.5", f"auth event {auth_event.event_id} is in another room")
    # 2.4 (v10, v11): the create event must be among the entries
    if not version.create_event_implied_in_auth and CREATE not in seen:
        raise reject(event, "2.4", "no m.room.create event among the auth events")


# ---------------------------------------------------------------------------------------
# the rules
# ---------------------------------------------------------------------------------------

def _check_create(event: Event) -> None:
    """Rule 1: the create event, checked without state."""
    version = event.room_version
    # 1.1: no prev_events
    if event.prev_events:
        raise AuthError("1.1", "create event has prev_events")
    if version.room_id_is_create_hash:
        # 1.2 (v12): the create event has no room_id
        if "room_id" in event.pdu:
            raise AuthError("1.2", "create event has a room_id")
    # 1.2 (v10, v11): room ID domain matches the sender's domain
    elif server_name_of(event.room_id) != event.sender_domain():
        raise AuthError("1.2", "room_id domain does not match sender domain")
    # 1.3: content.room_version, if present, is a recognised version
    if "room_version" in event.content:
        try:
            get_room_version(event.content["room_version"])
        except UnsupportedRoomVersion as exc:
            raise AuthError("1.3", "unrecognised room_version") from exc
    if version.creators_have_infinite_power:
        # 1.4 (v12): additional_creators is an array of valid user IDs
        try:
            check_additional_creators(dict(event.content))
        except EventFormatError as exc:
            raise AuthError("1.4", str(exc)) from exc
    elif not version.create_uses_sender_as_creator:
        # 1.4 (v10): content has a creator
        if "creator" not in event.content:
            raise AuthError("1.4", "create event content has no creator")
    # 1.4 (v11) / 1.5 (v10, v12): otherwise, allow


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _changed_over(
    event: Event, old_value: object, new_value: object, sender_pl: PowerLevel
) -> tuple[bool, bool]:
    """Whether the current and the new value (parsed for the room version; a value that
    is not a level compares as absent) are above the sender's level."""
    version = event.room_version
    old_level, new_level = parse_level(old_value, version), parse_level(new_value, version)
    return (old_level is not None and old_level > sender_pl,
            new_level is not None and new_level > sender_pl)


def _check_power_levels(event: Event, auth_state: AuthState) -> None:
    """Rule 9 (rooms 1-5: 10, room 12: 10): m.room.power_levels. Returns on allow."""
    version = event.room_version
    content = event.content
    maps = _PL_MAPS if version.limit_notifications_power_levels else ("events",)
    if version.strict_integer_power_levels:
        # 9.1 (v10+): scalar levels are integers
        for name in _PL_SCALARS:
            if name in content and not _is_int(content[name]):
                raise reject(event, "9.1", f"{name} is not an integer")
        # 9.2 (v10+): events and notifications are objects of integers
        for name in _PL_MAPS:
            if name in content:
                value = content[name]
                if not isinstance(value, dict) or not all(_is_int(v) for v in value.values()):
                    raise reject(event, "9.2", f"{name} is not an object of integers")
    # 9.3: users is an object of valid user IDs to integers (rooms 1-9: or integer strings)
    users = content.get("users", {})
    if not isinstance(users, dict) or not all(
        is_valid_user_id(k) and parse_level(v, version) is not None for k, v in users.items()
    ):
        raise reject(event, "9.3", "users is not an object of user IDs to integers")
    # 10.4 (v12): creators may not appear in users
    if version.creators_have_infinite_power:
        listed = get_creators(auth_state) & set(users)
        if listed:
            raise AuthError("10.4", f"room creators listed in users: {sorted(listed)}")
    # 9.4: no previous power levels event: allow
    previous = auth_state.get(POWER_LEVELS)
    if previous is None:
        return
    old = previous.content
    sender_pl = get_power_level(event.sender, auth_state)
    # 9.5: changed scalar levels: neither old nor new value may exceed the sender's level
    for name in _PL_SCALARS:
        old_value, new_value = old.get(name), content.get(name)
        if old_value == new_value:
            continue
        old_over, new_over = _changed_over(event, old_value, new_value, sender_pl)
        if old_over:
            raise reject(event, "9.5.1", f"current {name} is above the sender's level")
        if new_over:
            raise reject(event, "9.5.2", f"new {name} is above the sender's level")
    for name in maps:
        old_map = old.get(name)
        new_map = content.get(name)
        old_map = old_map if isinstance(old_map, dict) else {}
        new_map = new_map if isinstance(new_map, dict) else {}
        for key in old_map.keys() | new_map.keys():
            old_value, new_value = old_map.get(key), new_map.get(key)
            if old_value == new_value:
                continue
            old_over, new_over = _changed_over(event, old_value, new_value, sender_pl)
            # 9.6: changed or removed entries: current value not above the sender's level
            if old_over:
                raise reject(event, "9.6.1", f"current {name}.{key} is above sender's level")
            # 9.7: added or changed entries: new value not above the sender's level
            if new_over:
                raise reject(event, "9.7.1", f"new {name}.{key} is above the sender's level")
    old_users = old.get("users")
    old_users = old_users if isinstance(old_users, dict) else {}
    for user in old_users.keys() | users.keys():
        old_value, new_value = old_users.get(user), users.get(user)
        if old_value == new_value:
            continue
        old_level = parse_level(old_value, version)
        # 9.8: changing or removing someone else's entry needs to outrank it
        if user != event.sender and old_level is not None and old_level >= sender_pl:
            raise reject(event, "9.8.1", f"cannot change the level of {user}")
        # 9.9: a new value must not exceed the sender's level
        if _changed_over(event, None, new_value, sender_pl)[1]:
            raise reject(event, "9.9.1", f"cannot raise {user} above the sender's level")
    # 9.10: otherwise, allow


def _check_aliases(event: Event) -> None:
    """Rule 4 of rooms 1-5: m.room.aliases, decided here (no membership needed)."""
    # 4.1: no state_key
    if event.state_key is None:
        raise AuthError("4.1", "m.room.aliases without a state_key")
    # 4.2: the sender's server must be the state_key
    if event.sender_domain() != event.state_key:
        raise AuthError("4.2", "m.room.aliases state_key is not the sender's server")
    # 4.3: otherwise, allow


def _check_redaction_v1(event: Event, auth_state: AuthState, sender_pl: PowerLevel) -> None:
    """Rule 11 of rooms 1-2: m.room.redaction needs the redact level, or an event ID of
    the same domain as the redacted event's."""
    # 11.1: the sender's level is at least the redact level: allow
    if sender_pl >= _named_level(auth_state, "redact"):
        return
    # 11.2: the redacted event's ID has this event's ID's domain: allow
    redacts = event.redacts
    if redacts is not None and server_name_of(redacts) == server_name_of(event.event_id):
        return
    # 11.3: otherwise, reject
    raise AuthError("11.3", "sender cannot redact another server's event")


def check_auth_rules(event: Event, auth_state: AuthState) -> None:
    """Raise AuthError(rule, reason) unless ``event`` passes the authorization rules of its
    room version against ``auth_state`` (its auth events as a state map, or the room state
    before it). In room v12 ``auth_state`` must include the create event."""
    version = event.room_version

    # 1: m.room.create
    if event.type == "m.room.create" and event.state_key == "":
        _check_create(event)
        return

    create = auth_state.get(CREATE)
    if version.room_id_is_create_hash:
        # 2 (v12): the room ID is the create event's ID with sigil "!"
        if create is None or event.room_id != "!" + create.event_id[1:]:
            raise AuthError("2", "room_id is not the ID of the room's create event")
    elif create is None:
        # 2.4 (v10, v11): there must be a create event
        raise AuthError("2.4", "no m.room.create event in the auth state")
    elif create.room_id != event.room_id:
        # 2.5 (v10, v11): the create event is in this room
        raise AuthError("2.5", "the create event belongs to another room")

    # 3: m.federate = false keeps other servers out
    if create.content.get("m.federate", True) is False and (
        event.sender_domain() != create.sender_domain()
    ):
        raise reject(event, "3", "room does not federate with the sender's server")

    # 4 (rooms 1-5): m.room.aliases
    if version.special_case_aliases_auth and event.type == "m.room.aliases":
        _check_aliases(event)
        return

    # 4: m.room.member
    if event.type == "m.room.member":
        check_member(event, auth_state, create)
        return

    sender_pl = get_power_level(event.sender, auth_state)
    # 5: the sender is joined
    if _membership(auth_state, event.sender) != "join":
        raise reject(event, "5", "sender is not joined to the room")

    # 6: m.room.third_party_invite needs the invite level
    if event.type == "m.room.third_party_invite":
        if sender_pl >= _named_level(auth_state, "invite"):
            return
        raise reject(event, "6.1", "sender power level is below the invite level")

    # 7: the event type's required power level
    if _required_level(event, auth_state) > sender_pl:
        raise reject(event, "7", f"sender power level too low to send {event.type}")

    # 8: state keys starting with "@" belong to their user
    if event.state_key is not None and event.state_key.startswith("@") and (
        event.state_key != event.sender
    ):
        raise reject(event, "8", "state_key is another user's ID")

    # 9: m.room.power_levels
    if event.type == "m.room.power_levels":
        _check_power_levels(event, auth_state)

    # 11 (rooms 1-2): m.room.redaction
    if version.redaction_auth_rule and event.type == "m.room.redaction":
        _check_redaction_v1(event, auth_state, sender_pl)

    # 10 (rooms 1-2: 12, 3-5: 11): otherwise, allow
