"""What a user may read of a room: current members read everything up to now; a user who
left or was banned reads up to (and the state after) their leave event; anyone else
gets M_FORBIDDEN.

Within that range, history visibility decides event by event what the user sees
(``rooms/visibility.py``, applied by /messages, /event and /sync). Room state (``/state``,
``/members``) is not filtered by it, and a non-member cannot read a ``world_readable``
room (no peeking).
"""

from __future__ import annotations

from dataclasses import dataclass

from homeserver.errors import forbidden
from homeserver.events.event import StateKey
from homeserver.storage.events import EventStore
from homeserver.storage.timeline import TimelineStore


@dataclass(frozen=True, slots=True)
class RoomAccess:
    membership: str
    # Last visible stream ordering (None: up to now) and the member event that ended it.
    upto: int | None
    member_event_id: str | None


async def room_access(timeline: TimelineStore, user_id: str, room_id: str) -> RoomAccess:
    membership, event_id = await timeline.current_membership(user_id, room_id)
    if membership == "join":
        return RoomAccess("join", None, event_id)
    if membership in ("leave", "ban") and event_id is not None:
        ordering = await timeline.stream_ordering_of(event_id)
        if ordering is not None:
            return RoomAccess(membership, ordering, event_id)
    raise forbidden(f"{user_id} is not in room {room_id}")


async def visible_state_ids(events: EventStore, room_id: str, access: RoomAccess) -> dict[StateKey, str]:
    """The room state the user may see: the current state, or the state at their leave."""
    if access.upto is None or access.member_event_id is None:
        return await events.get_current_state_ids(room_id)
    return await events.get_state_ids_after(access.member_event_id) or {}
