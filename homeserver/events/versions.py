"""Room versions as data: each version is a frozen row of the rules it switches.

Code asks a flag (``version.room_id_is_create_hash``), never compares version numbers,
so adding a room version is adding a row to ``KNOWN_ROOM_VERSIONS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from homeserver.events.errors import UnsupportedRoomVersion


class StateResAlgorithm(Enum):
    V2 = "v2"
    V2_1 = "v2.1"  # room version 12: empty-start iterative auth, conflicted subgraph


class RedactionRules(Enum):
    V9 = "v9"  # used by rooms 9 and 10
    V11 = "v11"  # used by rooms 11 and 12


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
    # v10+: power level values must be integers (no strings)
    strict_integer_power_levels: bool = True
    knock_restricted: bool = True
    knocking: bool = True
    restricted_joins: bool = True


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
    v.identifier: v for v in (ROOM_V10, ROOM_V11, ROOM_V12)
}
DEFAULT_ROOM_VERSION = ROOM_V12


def get_room_version(identifier: object) -> RoomVersion:
    """The room version named ``identifier``; raises UnsupportedRoomVersion otherwise."""
    if isinstance(identifier, str):
        version = KNOWN_ROOM_VERSIONS.get(identifier)
        if version is not None:
            return version
    raise UnsupportedRoomVersion(identifier)
