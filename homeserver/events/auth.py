"""The authorization rules of room versions 10, 11 and 12, and the auth events selection.

``check_auth_rules`` runs an event against a state map and raises AuthError naming the
spec's rule number for the event's room version; helpers here (power levels, creators,
power events) are shared with state resolution. Signatures are the caller's business.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeGuard

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from homeserver.events.canonical import canonical_json, decode_b64
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
    _membership,
    _named_level,
    _required_level,
    get_creators,
    get_power_level,
)
from homeserver.events.versions import KNOWN_ROOM_VERSIONS, RoomVersion, get_room_version

# ---------------------------------------------------------------------------------------
# rule numbering
# ---------------------------------------------------------------------------------------

def _rule(version: RoomVersion, base: str) -> str:
    """Translate a rule number of the v10/v11 list into ``version``'s list.

    Room v12 inserted rule 2 (room ID is the create event), shifting rules 2..10 down by
    one, and rule 10.4 (creators not in ``users``), shifting 10.4..10.9 down by one.
    """
    if not version.room_id_is_create_hash:
        return base
    parts = base.split(".")
    top = int(parts[0])
    if top >= 2:
        parts[0] = str(top + 1)
    if top == 9 and len(parts) > 1 and int(parts[1]) >= 4:
        parts[1] = str(int(parts[1]) + 1)
    return ".".join(parts)


def _reject(event: Event, base: str, reason: str) -> AuthError:
    return AuthError(_rule(event.room_version, base), reason)


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
            raise _reject(event, "2.2", f"auth event {auth_event.event_id} is not a state event")
        key = auth_event.state_tuple
        # 2.1: duplicate entries for a (type, state_key) pair
        if key in seen:
            raise _reject(event, "2.1", f"duplicate auth events for {key}")
        seen.add(key)
        # 2.2: entries the auth events selection would not pick (v12: never the create)
        if key not in wanted:
            raise _reject(event, "2.2", f"auth event {key} is not selected for this event")
        # 2.5: every auth event is in the same room
        if auth_event.room_id != event.room_id:
            raise _reject(event, "2.5", f"auth event {auth_event.event_id} is in another room")
    # 2.4 (v10, v11): the create event must be among the entries
    if not version.create_event_implied_in_auth and CREATE not in seen:
        raise _reject(event, "2.4", "no m.room.create event among the auth events")


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


def _verify_third_party_signed(signed: Mapping[str, Any], tpi_event: Event) -> bool:
    """Rule 4.4.1.7: does any signature in ``signed`` verify with any public key of the
    m.room.third_party_invite event (``public_key`` and ``public_keys[].public_key``)?"""
    keys: list[str] = []
    content = tpi_event.content
    if isinstance(content.get("public_key"), str):
        keys.append(content["public_key"])
    public_keys = content.get("public_keys")
    if isinstance(public_keys, list):
        for entry in public_keys:
            if isinstance(entry, dict) and isinstance(entry.get("public_key"), str):
                keys.append(entry["public_key"])
    signatures = signed.get("signatures")
    if not isinstance(signatures, dict) or not keys:
        return False
    message = canonical_json({k: v for k, v in signed.items() if k not in ("signatures",
                                                                           "unsigned")})
    verify_keys: list[VerifyKey] = []
    for key in keys:
        try:
            verify_keys.append(VerifyKey(decode_b64(key)))
        except (ValueError, TypeError):
            continue
    for server_sigs in signatures.values():
        if not isinstance(server_sigs, dict):
            continue
        for sig_b64 in server_sigs.values():
            if not isinstance(sig_b64, str):
                continue
            try:
                signature = decode_b64(sig_b64)
            except ValueError:
                continue
            for verify_key in verify_keys:
                try:
                    verify_key.verify(message, signature)
                    return True
                except (BadSignatureError, ValueError):
                    continue
    return False


def _check_third_party_invite(event: Event, auth_state: AuthState) -> None:
    """Rule 4.4.1: an invite carrying ``third_party_invite``. Returns on allow."""
    target = event.state_key
    assert target is not None
    # 4.4.1.1: target user is banned
    if _membership(auth_state, target) == "ban":
        raise _reject(event, "4.4.1.1", "target user is banned")
    tpi = event.content["third_party_invite"]
    signed = tpi.get("signed") if isinstance(tpi, dict) else None
    # 4.4.1.2: third_party_invite has a signed property
    if not isinstance(signed, dict):
        raise _reject(event, "4.4.1.2", "third_party_invite has no signed object")
    mxid, token = signed.get("mxid"), signed.get("token")
    # 4.4.1.3: signed has mxid and token
    if not isinstance(mxid, str) or not isinstance(token, str):
        raise _reject(event, "4.4.1.3", "signed has no mxid or token")
    # 4.4.1.4: mxid matches state_key
    if mxid != target:
        raise _reject(event, "4.4.1.4", "signed.mxid does not match state_key")
    # 4.4.1.5: an m.room.third_party_invite event with state_key == token exists
    tpi_event = auth_state.get(("m.room.third_party_invite", token))
    if tpi_event is None:
        raise _reject(event, "4.4.1.5", "no m.room.third_party_invite for the token")
    # 4.4.1.6: same sender as the m.room.third_party_invite
    if tpi_event.sender != event.sender:
        raise _reject(event, "4.4.1.6", "sender differs from the third party invite's sender")
    # 4.4.1.7: a signature in signed matches a public key: allow
    if _verify_third_party_signed(signed, tpi_event):
        return
    # 4.4.1.8: otherwise, reject
    raise _reject(event, "4.4.1.8", "no signature in signed matches the invite's public keys")


def _check_join(event: Event, auth_state: AuthState, create: Event) -> None:
    """Rule 4.3: membership ``join``. Returns on allow."""
    version = event.room_version
    target = event.state_key
    # 4.3.1: the first join of the creator, straight after the create event
    creator = (create.sender if version.create_uses_sender_as_creator
               else create.content.get("creator"))
    if event.prev_events == (create.event_id,) and target == creator:
        return
    # 4.3.2: sender must match state_key
    if event.sender != target:
        raise _reject(event, "4.3.2", "sender does not match state_key")
    membership = _membership(auth_state, event.sender)
    # 4.3.3: sender is banned
    if membership == "ban":
        raise _reject(event, "4.3.3", "sender is banned")
    join_rules = auth_state.get(JOIN_RULES)
    join_rule = None if join_rules is None else join_rules.content.get("join_rule")
    # 4.3.4: invite/knock rooms: allow if invited or joined (else on to 4.3.7)
    if join_rule == "invite" or (join_rule == "knock" and version.knocking):
        if membership in ("invite", "join"):
            return
    # 4.3.5: restricted rooms
    if (join_rule == "restricted" and version.restricted_joins) or (
        join_rule == "knock_restricted" and version.knock_restricted
    ):
        # 4.3.5.1: already joined or invited: allow
        if membership in ("join", "invite"):
            return
        # 4.3.5.2: the authorising user must be joined and able to invite
        via = event.content.get("join_authorised_via_users_server")
        if not isinstance(via, str):
            raise _reject(event, "4.3.5.2", "no join_authorised_via_users_server")
        if _membership(auth_state, via) != "join":
            raise _reject(event, "4.3.5.2", "authorising user is not joined")
        if get_power_level(via, auth_state) < _named_level(auth_state, "invite"):
            raise _reject(event, "4.3.5.2", "authorising user cannot invite")
        # 4.3.5.3: otherwise, allow
        return
    # 4.3.6: public rooms: allow
    if join_rule == "public":
        return
    # 4.3.7: otherwise, reject
    raise _reject(event, "4.3.7", f"cannot join ({membership!r}, join_rule {join_rule!r})")


def _check_member(event: Event, auth_state: AuthState, create: Event) -> None:
    """Rule 4: m.room.member events. Returns on allow, raises on reject."""
    version = event.room_version
    # 4.1: state_key and content.membership are present
    membership = event.content.get("membership")
    if event.state_key is None or "membership" not in event.content:
        raise _reject(event, "4.1", "member event without state_key or membership")
    target = event.state_key
    # 4.2.1: signed by the server of join_authorised_via_users_server. The caller verified
    # signatures (signing.verify_event_signatures requires this server); here we check
    # the key is a user ID and that its server's signature is present.
    if "join_authorised_via_users_server" in event.content:
        via = event.content["join_authorised_via_users_server"]
        if not is_valid_user_id(via):
            raise _reject(event, "4.2.1", "join_authorised_via_users_server is not a user ID")
        sigs = event.pdu.get("signatures")
        if not isinstance(sigs, dict) or not sigs.get(server_name_of(via)):
            raise _reject(event, "4.2.1", "not signed by the authorising user's server")

    sender_pl = get_power_level(event.sender, auth_state)
    sender_membership = _membership(auth_state, event.sender)
    target_membership = _membership(auth_state, target)

    if membership == "join":
        _check_join(event, auth_state, create)
        return

    if membership == "invite":
        # 4.4.1: third party invites
        if "third_party_invite" in event.content:
            _check_third_party_invite(event, auth_state)
            return
        # 4.4.2: sender is joined
        if sender_membership != "join":
            raise _reject(event, "4.4.2", "sender is not joined")
        # 4.4.3: target is joined or banned
        if target_membership in ("join", "ban"):
            raise _reject(event, "4.4.3", f"target is already {target_membership}")
        # 4.4.4: sender power >= invite level: allow
        if sender_pl >= _named_level(auth_state, "invite"):
            return
        # 4.4.5: otherwise, reject
        raise _reject(event, "4.4.5", "sender power level is below the invite level")

    if membership == "leave":
        # 4.5.1: leaving oneself: allowed from invite, join or knock
        if event.sender == target:
            if sender_membership in ("invite", "join", "knock"):
                return
            raise _reject(event, "4.5.1", f"cannot leave from membership {sender_membership!r}")
        # 4.5.2: sender is joined
        if sender_membership != "join":
            raise _reject(event, "4.5.2", "sender is not joined")
        target_pl = get_power_level(target, auth_state)
        # 4.5.3: unbanning needs the ban level
        if target_membership == "ban" and sender_pl < _named_level(auth_state, "ban"):
            raise _reject(event, "4.5.3", "sender power level is below the ban level")
        # 4.5.4: kick level and outranking the target: allow
        if sender_pl >= _named_level(auth_state, "kick") and target_pl < sender_pl:
            return
        # 4.5.5: otherwise, reject
        raise _reject(event, "4.5.5", "sender cannot kick the target")

    if membership == "ban":
        # 4.6.1: sender is joined
        if sender_membership != "join":
            raise _reject(event, "4.6.1", "sender is not joined")
        # 4.6.2: ban level and outranking the target: allow
        target_pl = get_power_level(target, auth_state)
        if sender_pl >= _named_level(auth_state, "ban") and target_pl < sender_pl:
            return
        # 4.6.3: otherwise, reject
        raise _reject(event, "4.6.3", "sender cannot ban the target")

    if membership == "knock" and version.knocking:
        join_rules = auth_state.get(JOIN_RULES)
        join_rule = None if join_rules is None else join_rules.content.get("join_rule")
        # 4.7.1: join rule is knock or knock_restricted
        if not (join_rule == "knock" or (join_rule == "knock_restricted"
                                         and version.knock_restricted)):
            raise _reject(event, "4.7.1", f"cannot knock with join_rule {join_rule!r}")
        # 4.7.2: sender must match state_key
        if event.sender != target:
            raise _reject(event, "4.7.2", "sender does not match state_key")
        # 4.7.3: not banned, invited or joined: allow
        if sender_membership not in ("ban", "invite", "join"):
            return
        # 4.7.4: otherwise, reject
        raise _reject(event, "4.7.4", f"cannot knock from membership {sender_membership!r}")

    # 4.8: unknown membership
    raise _reject(event, "4.8", f"unknown membership {membership!r}")


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_power_levels(event: Event, auth_state: AuthState) -> None:
    """Rule 9 (room v12: 10): m.room.power_levels. Returns on allow."""
    version = event.room_version
    content = event.content
    # 9.1: scalar levels are integers
    for name in _PL_SCALARS:
        if name in content and not _is_int(content[name]):
            raise _reject(event, "9.1", f"{name} is not an integer")
    # 9.2: events and notifications are objects of integers
    for name in _PL_MAPS:
        if name in content:
            value = content[name]
            if not isinstance(value, dict) or not all(_is_int(v) for v in value.values()):
                raise _reject(event, "9.2", f"{name} is not an object of integers")
    # 9.3: users is an object of valid user IDs to integers
    users = content.get("users", {})
    if not isinstance(users, dict) or not all(
        is_valid_user_id(k) and _is_int(v) for k, v in users.items()
    ):
        raise _reject(event, "9.3", "users is not an object of user IDs to integers")
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
        if _is_int(old_value) and old_value > sender_pl:
            raise _reject(event, "9.5.1", f"current {name} is above the sender's level")
        if _is_int(new_value) and new_value > sender_pl:
            raise _reject(event, "9.5.2", f"new {name} is above the sender's level")
    for name in _PL_MAPS:
        old_map = old.get(name)
        new_map = content.get(name)
        old_map = old_map if isinstance(old_map, dict) else {}
        new_map = new_map if isinstance(new_map, dict) else {}
        for key in old_map.keys() | new_map.keys():
            old_value, new_value = old_map.get(key), new_map.get(key)
            if old_value == new_value:
                continue
            # 9.6: changed or removed entries: current value not above the sender's level
            if _is_int(old_value) and old_value > sender_pl:
                raise _reject(event, "9.6.1", f"current {name}.{key} is above sender's level")
            # 9.7: added or changed entries: new value not above the sender's level
            if _is_int(new_value) and new_value > sender_pl:
                raise _reject(event, "9.7.1", f"new {name}.{key} is above the sender's level")
    old_users = old.get("users")
    old_users = old_users if isinstance(old_users, dict) else {}
    for user in old_users.keys() | users.keys():
        old_value, new_value = old_users.get(user), users.get(user)
        if old_value == new_value:
            continue
        # 9.8: changing or removing someone else's entry needs to outrank it
        if user != event.sender and _is_int(old_value) and old_value >= sender_pl:
            raise _reject(event, "9.8.1", f"cannot change the level of {user}")
        # 9.9: a new value must not exceed the sender's level
        if _is_int(new_value) and new_value > sender_pl:
            raise _reject(event, "9.9.1", f"cannot raise {user} above the sender's level")
    # 9.10: otherwise, allow


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
        raise _reject(event, "3", "room does not federate with the sender's server")

    # 4: m.room.member
    if event.type == "m.room.member":
        _check_member(event, auth_state, create)
        return

    sender_pl = get_power_level(event.sender, auth_state)
    # 5: the sender is joined
    if _membership(auth_state, event.sender) != "join":
        raise _reject(event, "5", "sender is not joined to the room")

    # 6: m.room.third_party_invite needs the invite level
    if event.type == "m.room.third_party_invite":
        if sender_pl >= _named_level(auth_state, "invite"):
            return
        raise _reject(event, "6.1", "sender power level is below the invite level")

    # 7: the event type's required power level
    if _required_level(event, auth_state) > sender_pl:
        raise _reject(event, "7", f"sender power level too low to send {event.type}")

    # 8: state keys starting with "@" belong to their user
    if event.state_key is not None and event.state_key.startswith("@") and (
        event.state_key != event.sender
    ):
        raise _reject(event, "8", "state_key is another user's ID")

    # 9: m.room.power_levels
    if event.type == "m.room.power_levels":
        _check_power_levels(event, auth_state)

    # 10: otherwise, allow
