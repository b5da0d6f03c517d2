"""Step 4 of the checks on receipt: an event against its own auth events.

``auth_events_rejection`` decides one event whose auth events are looked up (inbound,
backfill); ``authorize_batch`` decides a batch fetched together (a join's state and auth
chain, outliers), where an event's auth events may be in the batch itself.
"""

from __future__ import annotations

from collections.abc import Mapping

from homeserver.events.auth import check_auth_events_shape, check_auth_rules
from homeserver.events.errors import AuthError
from homeserver.events.event import Event, StateKey
from homeserver.storage.events import Outcome

CREATE: StateKey = ("m.room.create", "")
# Rounds over a batch whose events wait on auth events of the same batch.
MAX_AUTH_PASSES = 50


def create_event_id(room_id: str) -> str:
    """Room v12: the create event's ID is the room ID with the sigil ``$``."""
    return "$" + room_id[1:]


def auth_events_rejection(
    event: Event, found: Mapping[str, tuple[Event, Outcome]], create: Event | None
) -> str | None:
    """Why ``event`` fails against its own auth events (``found``: those we hold, with
    their outcomes), or None when it passes. ``create``: the room's create event when the
    event does not cite it (room v12)."""
    missing = [a for a in event.auth_events if a not in found]
    if missing:
        return f"auth events not found: {missing[:3]}"
    try:
        auth_events = [found[a][0] for a in event.auth_events]
        check_auth_events_shape(event, auth_events)
        for a in event.auth_events:
            if found[a][1] is Outcome.REJECTED:
                raise AuthError("2.3", f"auth event {a} was rejected")
        auth_state = {e.state_tuple: e for e in auth_events}
        if CREATE not in auth_state and create is not None:
            auth_state[CREATE] = create
        check_auth_rules(event, auth_state)
    except AuthError as e:
        return str(e)
    return None


def cited_elsewhere(checked: Mapping[str, Event], room_id: str) -> set[str]:
    """The auth events the batch cites but does not hold (with the room's create event
    where the room version implies it): to be looked up among the events we hold."""
    wanted = {a for e in checked.values() for a in e.auth_events if a not in checked}
    if any(e.room_version.create_event_implied_in_auth for e in checked.values()):
        create_id = create_event_id(room_id)
        if create_id not in checked:
            wanted.add(create_id)
    return wanted


def authorize_batch(
    checked: Mapping[str, Event], known: Mapping[str, Event], room_id: str
) -> tuple[dict[str, Event], set[str], list[Event]]:
    """The events of ``checked`` (passed steps 1-3) that pass the auth rules against their
    own auth events, found in the batch or in ``known`` (events we hold, not rejected).
    Returns (good, failed, undecided); an event waits for its auth events of the batch to
    be decided first, for at most MAX_AUTH_PASSES rounds."""
    good: dict[str, Event] = {}
    bad: set[str] = set()
    pending = sorted(checked.values(), key=lambda e: (e.depth, e.event_id))
    create_id = create_event_id(room_id)
    for _ in range(MAX_AUTH_PASSES):
        progress = False
        waiting: list[Event] = []
        for event in pending:
            if any(a in checked and a not in good and a not in bad for a in event.auth_events):
                waiting.append(event)  # an auth event is not decided yet
                continue
            progress = True
            if _passes_auth(event, good, known, create_id):
                good[event.event_id] = event
            else:
                bad.add(event.event_id)
        pending = waiting
        if not pending or not progress:
            break
    return good, bad, pending


def _passes_auth(event: Event, good: Mapping[str, Event], known: Mapping[str, Event], create_id: str) -> bool:
    auth_events: list[Event] = []
    for a in event.auth_events:
        found = good.get(a) or known.get(a)
        if found is None:
            return False  # missing or rejected auth event (rule 2.3)
        auth_events.append(found)
    auth_state = {e.state_tuple: e for e in auth_events if e.is_state}
    if event.room_version.create_event_implied_in_auth and not (
        event.type == "m.room.create" and event.state_key == ""
    ):
        create = good.get(create_id) or known.get(create_id)
        if create is None:
            return False
        auth_state[CREATE] = create
    try:
        check_auth_events_shape(event, auth_events)
        check_auth_rules(event, auth_state)
    except AuthError:
        return False
    return True

