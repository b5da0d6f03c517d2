"""What a user may read of a room (``/state``, ``/state/{type}/{key}``, ``/members``,
``/joined_members``, ``/messages``, ``/context``, ``/event``):

- a current member reads everything up to now;
- a user who left reads up to (and the state after) their leave event, if that leave
  ended their join (they left, or were kicked), or if the room was ``world_readable``
  when they left;
- anyone else gets M_FORBIDDEN: a banned user (banned before or after joining), a user
  whose leave did not end a join of a room that is not ``world_readable`` (an invite
  rejected, a knock retracted, an invitee kicked), an invitee or knocker, a stranger. A non-member cannot
  read a ``world_readable`` room either (no peeking).

Within that range, history visibility decides event by event what the user sees
(``rooms/visibility.py``, applied by /messages, /event, /context and /sync). Room state
(``/state``, ``/members``) is not filtered by it. /sync's ``leave`` section follows
``may_read_after_leaving``: a room left that way comes with its timeline up to the leave
(filtered by history visibility; a ban that ended a join included), any other with the
user's own member event only, and no state.
"""

from __future__ import annotations

from dataclasses import dataclass

from homeserver.errors import forbidden
from homeserver.events.event import StateKey
from homeserver.rooms.visibility import HISTORY_VISIBILITY, WORLD_READABLE, visibility_value
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
    if membership == "leave" and event_id is not None:
        ordering = await timeline.stream_ordering_of(event_id)
        if ordering is not None and await may_read_after_leaving(timeline.events, user_id, event_id):
            return RoomAccess(membership, ordering, event_id)
    raise forbidden(f"{user_id} is not in room {room_id}")


async def may_read_after_leaving(events: EventStore, user_id: str, leave_event_id: str) -> bool:
    """Whether a user whose membership ended with ``leave_event_id`` may read the room up
    to it: the leave ended their join (they left, or were kicked or banned while joined), or
    the room was ``world_readable`` when they left. (``room_access`` refuses a ban anyway;
    /sync shows a room left this way with its timeline up to the leave.)"""
    before = await events.get_state_ids_before(leave_event_id) or {}
    member_id = before.get(("m.room.member", user_id))
    if member_id is not None:
        member = await events.get_event(member_id)
        if member is not None and member.event.membership == "join":
            return True
    after = await events.get_state_ids_after(leave_event_id) or {}
    hv_id = after.get(HISTORY_VISIBILITY)
    if hv_id is None:
        return False
    hv = await events.get_event(hv_id)
    return hv is not None and visibility_value(hv.event.content) == WORLD_READABLE


async def visible_state_ids(events: EventStore, room_id: str, access: RoomAccess) -> dict[StateKey, str]:
    """The room state the user may see: the current state, or the state at their leave."""
    if access.upto is None or access.member_event_id is None:
        return await events.get_current_state_ids(room_id)
    return await events.get_state_ids_after(access.member_event_id) or {}
