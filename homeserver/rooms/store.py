"""Room memberships the event graph cannot hold (invites received over federation for
rooms we are not in, their rejections, forgotten rooms): the rule for which member event
ends such an invite or knock. The rows themselves are ``storage/memberships.py``'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from homeserver.storage.memberships import ReceivedInvite, RoomMembershipStore

__all__ = ["ENDING_MEMBERSHIPS", "ReceivedInvite", "RoomMembershipStore", "ended_member"]

# Memberships that end an invite or a knock of a room we hold no state of.
ENDING_MEMBERSHIPS = ("leave", "ban")


def ended_member(pdu: Mapping[str, Any]) -> str | None:
    """The user whose membership ``pdu`` ends if it is a kick or a ban (an invite revoked,
    a knock refused), else None. Such an event reaches a server that holds no state of the
    room when the user is its own; it is taken in when that user holds an invite or a knock
    of the room (``RoomMembershipStore.pending``)."""
    target = pdu.get("state_key")
    content = pdu.get("content")
    if (
        pdu.get("type") != "m.room.member"
        or not isinstance(target, str)
        or not isinstance(content, Mapping)
        or content.get("membership") not in ENDING_MEMBERSHIPS
        or target == pdu.get("sender")
    ):
        return None
    return target
