"""Redactions applied to what we serve.

An ``m.room.redaction`` names the event it redacts. From room version 3 on, the auth rules
accept any redaction and leave the decision to whoever applies it: we apply one (serve
its target redacted, to clients and to other servers) when the redaction is accepted, is
in the target's room, and its sender is on the target sender's server or had the power
levels' ``redact`` level in the state before the redaction. A redaction that arrives
before its target is applied once the target is here; one that is not allowed stays in
the timeline (clients see it) and changes nothing.

Applied only when serving: the stored event keeps its content, and the room's state and
authorization go on using it whole (a redacted state event is served redacted).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from homeserver.events.auth import get_power_level, named_level
from homeserver.events.event import Event, StateKey
from homeserver.events.identifiers import server_name_of
from homeserver.events.redaction import redact
from homeserver.storage.events import EventStore, Outcome

_CHUNK = 500
_AUTH_KEYS: tuple[StateKey, ...] = (("m.room.create", ""), ("m.room.power_levels", ""))


async def applied_redactions(store: EventStore, events: Iterable[Event]) -> dict[str, Event]:
    """For each of ``events`` that an allowed redaction redacts, that redaction (the first
    in stream order): what the event is served redacted because of."""
    targets = {e.event_id: e for e in events}
    if not targets:
        return {}
    ids = list(targets)
    rows: list[tuple[int, str, str]] = []
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        found = await store.db.fetchall(
            "SELECT e.stream_ordering, r.redacts, r.event_id FROM redactions r"
            " JOIN events e ON e.event_id = r.event_id"
            f" WHERE r.redacts IN ({','.join('?' * len(chunk))}) AND e.outcome = ?",
            *chunk, Outcome.ACCEPTED.value,
        )
        rows.extend((int(r[0]), r[1], r[2]) for r in found)
    if not rows:
        return {}
    rows.sort()
    redactions = await store.get_events(r[2] for r in rows)
    out: dict[str, Event] = {}
    for _, target_id, redaction_id in rows:
        stored = redactions.get(redaction_id)
        if target_id in out or stored is None:
            continue
        if await _allowed(store, stored.event, targets[target_id]):
            out[target_id] = stored.event
    return out


async def _allowed(store: EventStore, redaction: Event, target: Event) -> bool:
    if redaction.room_id != target.room_id:
        return False
    if server_name_of(redaction.sender) == server_name_of(target.sender):
        return True
    state = await store.get_state_ids_before(redaction.event_id)
    if state is None:
        return False
    wanted = {k: state[k] for k in _AUTH_KEYS if k in state}
    found = await store.get_events(wanted.values())
    auth_state = {k: found[eid].event for k, eid in wanted.items() if eid in found}
    return get_power_level(redaction.sender, auth_state) >= named_level(auth_state, "redact")


def redacted(event: Event) -> Event:
    """``event`` as served once redacted (its signatures still verify)."""
    pdu = redact(event.pdu, event.room_version)
    return Event.from_pdu(pdu, event.room_version, event_id=event.event_id)


def served(events: Iterable[Event], redactions: Mapping[str, Event]) -> list[Event]:
    """``events`` with those in ``redactions`` redacted."""
    return [redacted(e) if e.event_id in redactions else e for e in events]
