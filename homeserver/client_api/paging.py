"""Room event filters on paged reads (/messages, /context) and what /sync's sections share.

``/messages`` with a filter, or with senders the user ignores, reads up to
``FILTER_READ_FACTOR`` times the page asked for and keeps the events that pass, at most the
page; ``end`` then continues after the last event kept (or after the last one read when
fewer passed), so paging on neither skips nor repeats. A page may hold fewer events than
``limit`` while ``end`` is given; clients page on, as the spec allows.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from homeserver.client_api.common import parse_room_event_filter
from homeserver.client_api.filtering import RoomEventFilter
from homeserver.client_api.filtering import parse_room_event_filter as parse_filter_object
from homeserver.client_api.tokens import page_token
from homeserver.errors import MatrixError
from homeserver.storage.events import EventStore, Outcome, StoredEvent

FILTER_READ_FACTOR = 5


def room_event_filter(raw: str | None) -> RoomEventFilter:
    """The ``filter`` query parameter (400 M_NOT_JSON / M_INVALID_PARAM if it is not one)."""
    value = parse_room_event_filter(raw)
    if value is None:
        return RoomEventFilter()
    try:
        return parse_filter_object(value, "filter")
    except MatrixError as e:
        raise MatrixError(400, "M_INVALID_PARAM", str(e)) from None


def event_view(se: StoredEvent) -> dict[str, Any]:
    """What a filter matches on: type, sender, content, room_id."""
    e = se.event
    return {"type": e.type, "sender": e.sender, "content": e.content, "room_id": e.room_id}


def keep(se: StoredEvent, flt: RoomEventFilter, ignored: Collection[str]) -> bool:
    """Whether a room event is shown: it passes ``flt`` and is not an ignored user's
    (their state events are shown: they make the room's state)."""
    if ignored and se.event.state_key is None and se.event.sender in ignored:
        return False
    return flt.is_everything or flt.matches(event_view(se))


def filtered_page(
    chunk: list[StoredEvent], want: int, flt: RoomEventFilter, ignored: Collection[str], end: str | None,
    *, backwards: bool,
) -> tuple[list[StoredEvent], str | None]:
    """The events of a read page that pass, at most ``want``, and the token to go on from."""
    kept: list[StoredEvent] = []
    for se in chunk:
        if keep(se, flt, ignored):
            kept.append(se)
            if len(kept) == want:
                last = se.stream_ordering
                return kept, page_token(last - 1 if backwards else last)
    return kept, end


async def lazy_member_state(events: EventStore, room_id: str, chunk: list[StoredEvent]) -> list[StoredEvent]:
    """The member events of the senders of ``chunk``, from the state before its first
    event (the room's current state when the chunk is empty or its state is unknown)."""
    senders = {se.event.sender for se in chunk}
    if not senders:
        return []
    state = (await events.get_state_ids_before(chunk[0].event.event_id)) or await events.get_current_state_ids(room_id)
    ids = [state[("m.room.member", s)] for s in sorted(senders) if ("m.room.member", s) in state]
    found = await events.get_events(ids)
    return [found[i] for i in ids if i in found and found[i].outcome is not Outcome.REJECTED]
