"""Room versions as data: each version is a frozen row of the rules it switches.

Code asks a flag (``version.room_id_is_create_hash``), never compares version numbers,
so adding a room version is adding a row to ``KNOWN_ROOM_VERSIONS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from homeserver.events.errors import UnsupportedRoomVersion


class StateResAlgorithm(Enum):
    V1 = "v1"  # room version 1
    V2 = "v2"
    V2_1 = "v2.1"  # room version 12: empty-start iterative auth, conflicted subgraph


class RedactionRules(Enum):
    V1 = "v1"  # rooms 1 to 5: m.room.aliases keeps "aliases"
    V6 = "v6"  # rooms 6 and 7: as v1 without m.room.aliases
    V8 = "v8"  # room 8: m.room.join_rules keeps "allow"
    V9 = "v9"  # rooms 9 and 10: m.room.member keeps "join_authorised_via_users_server"
    V11 = "v11"  # rooms 11 and 12


class EventIdFormat(Enum):
    ORIGIN = "origin"  # rooms 1, 2: "$opaque:server" chosen by the origin, in the PDU
    REFERENCE_B64 = "reference_b64"  # room 3: reference hash, standard unpadded base64
    REFERENCE_URLSAFE = "reference_urlsafe"  # rooms 4+: reference hash, URL-safe base64


@dataclass(frozen=True, slots=True)
class RoomVersion:
    identifier: str
    stable: bool
    state_res: StateResAlgorithm
    redaction: RedactionRules
    # v12: room ID is "!" + the create event's reference hash; create events carry no room_id
    room_id_is_create_hash: bool
    # v12: creators (sender + additional_creators) have infinite power
    creators_have_infinite_power: bool
    # v12: m.room.create is never listed in auth_events; room_id implies it
    create_event_implied_in_auth: bool
    # v11: m.room.create content has no "creator"; the sender is the creator
    create_uses_sender_as_creator: bool
    # v11: m.room.redaction carries "redacts" in content instead of top level
    redacts_in_content: bool
    # v10+: power level values must be integers (before: strings and, v1-5, floats parse)
    strict_integer_power_levels: bool = True
    knock_restricted: bool = True  # v10+: join rule knock_restricted
    knocking: bool = True  # v7+: membership knock, join rule knock
    restricted_joins: bool = True  # v8+: join rule restricted, join_authorised_via_...
    event_id_format: EventIdFormat = EventIdFormat.REFERENCE_URLSAFE
    # v6+: events must be canonical JSON (before: floats and out-of-range integers pass)
    strict_canonical_json: bool = True
    # v5+: a signing key counts only until its valid_until_ts
    enforce_key_validity: bool = True
    # v1-5: auth rule 4, only the state_key's server may send m.room.aliases
    special_case_aliases_auth: bool = False
    # v6+: power levels' "notifications" is checked like "events" (auth rule 9.4/9.5)
    limit_notifications_power_levels: bool = True
    # v1-2: auth rule 11, m.room.redaction needs the redact level or the same event ID domain
    redaction_auth_rule: bool = False

    @property
    def origin_event_ids(self) -> bool:
        """Rooms 1, 2: event IDs are chosen by the origin and carried in the PDU, and
        ``prev_events``/``auth_events`` are ``[event_id, {"sha256": ...}]`` pairs."""
        return self.event_id_format is EventIdFormat.ORIGIN


def _pre_v10(identifier: str, redaction: RedactionRules, **flags: object) -> RoomVersion:
    """A room version 1 to 9: creator in content, redacts at top level, v2 state
    resolution, string power levels; ``flags`` the ways it differs from room 9."""
    fields: dict[str, object] = dict(
        identifier=identifier,
        stable=True,
        state_res=StateResAlgorithm.V2,
        redaction=redaction,
        room_id_is_create_hash=False,
        creators_have_infinite_power=False,
        create_event_implied_in_auth=False,
        create_uses_sender_as_creator=False,
        redacts_in_content=False,
        strict_integer_power_levels=False,
        knock_restricted=False,
    )
    fields.update(flags)
    return RoomVersion(**fields)  # type: ignore[arg-type]


_V1_TO_5 = dict(
    knocking=False, restricted_joins=False, strict_canonical_json=False,
    special_case_aliases_auth=True, limit_notifications_power_levels=False,
)
_V1_TO_2 = dict(
    _V1_TO_5, event_id_format=EventIdFormat.ORIGIN, enforce_key_validity=False,
    redaction_auth_rule=True,
)
ROOM_V1 = _pre_v10("1", RedactionRules.V1, state_res=StateResAlgorithm.V1, **_V1_TO_2)
ROOM_V2 = _pre_v10("2", RedactionRules.V1, **_V1_TO_2)
ROOM_V3 = _pre_v10(
    "3", RedactionRules.V1, event_id_format=EventIdFormat.REFERENCE_B64,
    enforce_key_validity=False, **_V1_TO_5,
)
ROOM_V4 = _pre_v10("4", RedactionRules.V1, enforce_key_validity=False, **_V1_TO_5)
ROOM_V5 = _pre_v10("5", RedactionRules.V1, **_V1_TO_5)
ROOM_V6 = _pre_v10("6", RedactionRules.V6, knocking=False, restricted_joins=False)
ROOM_V7 = _pre_v10("7", RedactionRules.V6, restricted_joins=False)
ROOM_V8 = _pre_v10("8", RedactionRules.V8)
ROOM_V9 = _pre_v10("9", RedactionRules.V9)
ROOM_V10 = RoomVersion(
    identifier="10",
    stable=True,
    state_res=StateResAlgorithm.V2,
    redaction=RedactionRules.V9,
    room_id_is_create_hash=False,
    creators_have_infinite_power=False,
    create_event_implied_in_auth=False,
    create_uses_sender_as_creator=False,
    redacts_in_content=False,
)
ROOM_V11 = RoomVersion(
    identifier="11",
    stable=True,
    state_res=StateResAlgorithm.V2,
    redaction=RedactionRules.V11,
    room_id_is_create_hash=False,
    creators_have_infinite_power=False,
    create_event_implied_in_auth=False,
    create_uses_sender_as_creator=True,
    redacts_in_content=True,
)
ROOM_V12 = RoomVersion(
    identifier="12",
    stable=True,
    state_res=StateResAlgorithm.V2_1,
    redaction=RedactionRules.V11,
    room_id_is_create_hash=True,
    creators_have_infinite_power=True,
    create_event_implied_in_auth=True,
    create_uses_sender_as_creator=True,
    redacts_in_content=True,
)

KNOWN_ROOM_VERSIONS: dict[str, RoomVersion] = {
    v.identifier: v
    for v in (ROOM_V1, ROOM_V2, ROOM_V3, ROOM_V4, ROOM_V5, ROOM_V6, ROOM_V7, ROOM_V8,
              ROOM_V9, ROOM_V10, ROOM_V11, ROOM_V12)
}
DEFAULT_ROOM_VERSION = ROOM_V12


def get_room_version(identifier: object) -> RoomVersion:
    """The room version named ``identifier``; raises UnsupportedRoomVersion otherwise."""
    if isinstance(identifier, str):
        version = KNOWN_ROOM_VERSIONS.get(identifier)
        if version is not None:
            return version
    raise UnsupportedRoomVersion(identifier)
