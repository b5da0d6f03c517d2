"""An event of a room we hold no state of: the door admits only kicks and bans of our
users who hold an invite to the room or a knock on it. Steps 1-3 (format, signatures,
hashes) as for any PDU; then the invite or knock is ended with it when it shows it may."""

from __future__ import annotations

import logging

from homeserver.events.event import Event
from homeserver.notifier import Notifier
from homeserver.rooms.checks.receipt import Dropped
from homeserver.rooms.store import RoomMembershipStore, ended_member

log = logging.getLogger(__name__)


class OutOfBand:
    def __init__(self, memberships: RoomMembershipStore, notifier: Notifier) -> None:
        self._memberships = memberships
        self._notifier = notifier
        # Told (user ID, room ID) after a kick or ban ended a user's invite or knock of a
        # room we hold no state of (wakes the user's /sync long-polls).

    async def __call__(self, origin: str, room_id: str, event: Event) -> str | None:
        """End the invite or knock ``event`` (checked: steps 1-3) ends, if the event cites
        it among its auth events and, for an invite, comes from the inviter (as Synapse
        asks of an invite's rescission). There is no state to authorize it against, and
        it is not stored as a room event. None: nothing stood to be ended (a repeat, or
        the user acted first)."""
        target = ended_member(event.pdu)
        if target is None or event.membership is None:
            raise Dropped("unplaceable: an event of a room we are not in")
        pending = await self._memberships.pending(target, room_id)
        if pending is None:
            return None
        # Without the room's state this cannot be authorized; what it must show instead:
        # it cites the invite or knock it ends among its auth events (the room's servers
        # know its ID; a stranger does not), and an invite is ended by its inviter only.
        if pending.event_id not in event.auth_events or (
            pending.membership == "invite" and event.sender != pending.sender
        ):
            raise Dropped("unplaceable: it does not end the invite or knock we hold")
        await self._memberships.end(pending, event.pdu, event.event_id, event.membership)
        log.info("remote invite or knock ended", extra={
            "origin": origin, "event_id": event.event_id, "room_id": room_id, "membership": event.membership})
        self._notifier.on_invite(target, room_id)
        return "out_of_band"
