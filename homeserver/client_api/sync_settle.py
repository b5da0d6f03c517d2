"""/sync: the memberships a response is built from, settled against the token's position.

A sync reads the user's memberships first (and watches their rooms, so that anything
committed afterwards wakes it), then the stream positions that become the next token. A
join committed between the two reads is in the token's range but not in the memberships
read: that response would still show the room as an invite, and the next one, starting
after the join, would never show it as newly joined, so the client would never get the
room's state (Element stayed on the invite). Settling reads the memberships again when a
join in the range is missing from them, and takes as joined each room that is joined now
and whose latest member event up to the token is the join (an incremental sync has these
events already; an initial sync reads them for the rooms joined since). The room is then
joined in this response, newly and in full.

An invite or knock received over federation (the invites table, whose rows the sync reads
after the memberships) has the same window: a row newer than the previous token whose room
the memberships read do not show so is settled when the memberships read again show it
(``settle_received``). A leave committed in that window is already in the timeline of the
room's (joined) section, where clients apply it: not settled.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from homeserver.storage.timeline import MembershipChange, TimelineStore

if TYPE_CHECKING:
    from homeserver.rooms.service import RoomService
    from homeserver.storage.memberships import ReceivedInvite


def settle_joins(
    memberships: Mapping[str, str], latest: Mapping[str, MembershipChange], now: Mapping[str, str],
    allows_room: Callable[[str], bool],
) -> dict[str, str]:
    """``memberships`` with every room marked joined whose ``latest`` member event up to the
    token is a join and that is joined ``now`` (the memberships read again)."""
    settled = dict(memberships)
    for room_id, change in latest.items():
        if (change.membership == "join" and settled.get(room_id) != "join" and now.get(room_id) == "join"
                and allows_room(room_id)):
            settled[room_id] = "join"
    return settled


async def settled_memberships(
    rooms: RoomService, timeline: TimelineStore, user_id: str, memberships: Mapping[str, str],
    changes: Mapping[str, MembershipChange] | None, upto: int, allows_room: Callable[[str], bool],
) -> dict[str, str] | None:
    """The settled memberships, or None when nothing needs settling. ``changes``: the latest
    member event per room in an incremental sync's range (None for an initial sync)."""
    if changes is not None and not any(
        c.membership == "join" and memberships.get(r) != "join" for r, c in changes.items()
    ):
        return None
    now = await rooms.rooms_for_user(user_id)
    latest: dict[str, MembershipChange] = {}
    if changes is not None:
        latest = dict(changes)
    else:
        for room_id, membership in now.items():
            if membership == "join" and memberships.get(room_id) != "join":
                change = await timeline.latest_membership(user_id, room_id, upto)
                if change is not None:
                    latest[room_id] = change
    settled = settle_joins(memberships, latest, now, allows_room)
    return settled if settled != memberships else None


def settle_received(
    memberships: Mapping[str, str], received: Mapping[str, str], now: Mapping[str, str],
) -> dict[str, str]:
    """``memberships`` with each room of a ``received`` invite or knock (room -> membership of
    the rows newer than the previous token) that the memberships read again (``now``) show."""
    settled = dict(memberships)
    for room_id, membership in received.items():
        if (membership in ("invite", "knock") and settled.get(room_id) not in (membership, "join")
                and now.get(room_id) == membership):
            settled[room_id] = membership
    return settled


async def settled_received_memberships(
    rooms: RoomService, user_id: str, memberships: Mapping[str, str], rows: Mapping[str, ReceivedInvite],
) -> dict[str, str] | None:
    """The memberships settled for received invites and knocks, or None when nothing needs it."""
    received = {r: row.membership for r, row in rows.items()}
    if not any(m in ("invite", "knock") and memberships.get(r) not in (m, "join") for r, m in received.items()):
        return None
    settled = settle_received(memberships, received, await rooms.rooms_for_user(user_id))
    return settled if settled != memberships else None
