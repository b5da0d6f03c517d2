"""Redactions applied to what we serve.

An ``m.room.redaction`` names the event it redacts. From room version 3 on, the auth rules
accept any redaction and leave the decision to whoever applies it: we apply one (serve
its target redacted, to clients and to other servers) when the redaction is accepted, is
in the target's room, and its sender is on the target sender's server or had the power
levels' ``redact`` level in the state before the redaction. In rooms 1 and 2 the same
check asks auth rule 11's question instead (``same_origin``: the two event IDs' domains,
not the senders' servers); the auth rules already refused any other redaction. A redaction that arrives
before its target is applied once the target is here. Clients see a redaction event in
their timelines only once it applies (they redact on receipt: one we do not apply, or
cannot check yet, would hide an event we keep serving).

Each redaction is judged on its own, once: one that does not apply (from another room,
or by someone with neither the power nor the target sender's server) never counts toward
anything and is never judged again (its row is dropped, ``RedactionStore.forget``); once
an event has a redaction that applies, the other rows naming it are dropped too. Redactions
naming an event are read ``PER_ROUND`` at a time in stream order, so a flood of refused
redactions costs one judgement each, once, and an event served again costs one look-up.

Applied only when serving: the stored event keeps its content, and the room's state and
authorization go on using it whole (a redacted state event is served redacted).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from homeserver.events.event import Event, StateKey
from homeserver.events.identifiers import server_name_of
from homeserver.events.power import get_power_level, named_level
from homeserver.events.redaction import redact
from homeserver.storage.events import EventStore, StoredEvent

# Candidate redactions of one event read (and judged) per round.
PER_ROUND = 8
_AUTH_KEYS: tuple[StateKey, ...] = (("m.room.create", ""), ("m.room.power_levels", ""))


async def applied_redactions(store: EventStore, events: Iterable[Event]) -> dict[str, Event]:
    """For each of ``events`` that an allowed redaction redacts, that redaction (the first
    in stream order): what the event is served redacted because of."""
    targets = {e.event_id: e for e in events}
    out: dict[str, Event] = {}
    pending = list(targets)
    while pending:
        rows = await store.redactions.candidates_of(pending, PER_ROUND)
        if not rows:
            break
        rows.sort()
        by_target: dict[str, list[str]] = {}
        for _, target_id, redaction_id in rows:
            by_target.setdefault(target_id, []).append(redaction_id)
        found = await store.get_events(r[2] for r in rows)
        refused: list[str] = []
        more: list[str] = []
        for target_id, redaction_ids in by_target.items():
            for redaction_id in redaction_ids:
                stored = found.get(redaction_id)
                if stored is not None and await _verdict(store, stored.event, targets[target_id]):
                    out[target_id] = stored.event
                    break
                refused.append(redaction_id)
            if target_id in out:
                if len(redaction_ids) > 1:
                    await store.redactions.keep_only(target_id, out[target_id].event_id)
            elif len(redaction_ids) >= PER_ROUND:
                more.append(target_id)  # all refused: the next ones in stream order
        if refused:
            await store.redactions.forget(refused)
        pending = more
    return out


async def hide_unapplied(store: EventStore, events: Sequence[StoredEvent]) -> list[StoredEvent]:
    """``events`` without the redaction events that do not apply (not allowed, or their
    target not held yet): what a client's timeline may show."""
    pending = [se.event for se in events if se.event.type == "m.room.redaction" and se.event.state_key is None]
    if not pending:
        return list(events)
    targets = await store.get_events(e.redacts for e in pending if e.redacts is not None)
    hidden: set[str] = set()
    for redaction in pending:
        target = targets.get(redaction.redacts) if redaction.redacts is not None else None
        if target is None or not await _verdict(store, redaction, target.event):
            hidden.add(redaction.event_id)
    return [se for se in events if se.event.event_id not in hidden]


async def _verdict(store: EventStore, redaction: Event, target: Event) -> bool:
    cache = store.redactions.verdicts
    verdict = cache.get(redaction.event_id)
    if verdict is None:
        verdict = await _allowed(store, redaction, target)
        cache[redaction.event_id] = verdict
    return verdict


def same_origin(redaction: Event, target: Event) -> bool:
    """Whether ``redaction`` may redact ``target`` without the ``redact`` power level, by
    the room version's rule: in rooms 1 and 2 (auth rule 11) when the two event IDs have the
    same domain; from room 3 when the two senders are on the same server."""
    if target.room_version.redaction_auth_rule:
        domain = server_name_of(redaction.event_id)
        return domain != "" and domain == server_name_of(target.event_id)
    return server_name_of(redaction.sender) == server_name_of(target.sender)


async def _allowed(store: EventStore, redaction: Event, target: Event) -> bool:
    if redaction.room_id != target.room_id or redaction.redacts != target.event_id:
        return False
    if same_origin(redaction, target):
        return True
    state = await store.get_state_ids_before(redaction.event_id)
    if state is None:
        return False
    wanted = {k: state[k] for k in _AUTH_KEYS if k in state}
    found = await store.get_events(wanted.values())
    auth_state = {k: found[eid].event for k, eid in wanted.items() if eid in found}
    return get_power_level(redaction.sender, auth_state) >= named_level(auth_state, "redact")


async def served_pdus(store: EventStore, events: Sequence[Event]) -> list[dict[str, Any]]:
    """The PDUs of ``events`` as other servers get them: pruned where a redaction applies
    (their signatures still verify; the receiver sees the content hash differ)."""
    redactions = await applied_redactions(store, events)
    return [redact(e.pdu, e.room_version) if e.event_id in redactions else e.pdu for e in events]


def redacted(event: Event) -> Event:
    """``event`` as served once redacted (its signatures still verify)."""
    pdu = redact(event.pdu, event.room_version)
    return Event.from_pdu(pdu, event.room_version, event_id=event.event_id)


def served(events: Iterable[Event], redactions: Mapping[str, Event]) -> list[Event]:
    """``events`` with those in ``redactions`` redacted."""
    return [redacted(e) if e.event_id in redactions else e for e in events]
