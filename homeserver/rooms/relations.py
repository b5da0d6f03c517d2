"""Bundled aggregations (``unsigned.m.relations``) of the events served to a client.

For a page of events, with one look-up for the whole page (``RelationStore.related_kinds``)
and one more per relation type found on it:

- ``m.replace``: the latest valid edit, whole (spec v1.7 and later): by the parent's
  sender, of the parent's type, with an ``m.new_content`` object, newest by
  ``origin_server_ts`` then event ID. An edit of an edit is not bundled.
- ``m.thread``: ``count`` of replies, the ``latest_event`` and whether the user sent the
  root or a reply (``current_user_participated``).
- ``m.reference``: the ``chunk`` of event IDs that reference the event (the first
  ``MAX_REFERENCES``).

State events and redacted events get no aggregations; redacted children never count
(storage/relations.py). The caller serialises the events.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from homeserver.events.event import Event
from homeserver.events.relations import REFERENCE, REPLACE, THREAD, event_relation
from homeserver.storage.events import EventStore, Outcome, StoredEvent
from homeserver.storage.relations import RelationStore

MAX_REFERENCES = 100
# Edits of one event looked at to find a valid one (the newest first).
EDITS_PER_EVENT = 4


@dataclass(frozen=True, slots=True)
class Thread:
    count: int
    latest: StoredEvent
    participated: bool


@dataclass(slots=True)
class Bundle:
    replace: StoredEvent | None = None
    thread: Thread | None = None
    references: list[str] = field(default_factory=list)


async def bundles_for(
    store: EventStore, user_id: str, events: Sequence[Event], *, skip: Collection[str] = (),
) -> dict[str, Bundle]:
    """The aggregations of each of ``events`` that has any (``skip``: event IDs to leave
    out, such as the redacted ones; state events are left out too)."""
    # State events and redacted ones get no aggregations (as Synapse does): an initial
    # sync's room state costs no look-up.
    parents = {e.event_id: e for e in events if e.event_id not in skip and not e.is_state}
    if not parents:
        return {}
    relations = RelationStore(store.db)
    kinds = await relations.related_kinds(list(parents))
    if not kinds:
        return {}
    out: dict[str, Bundle] = {}

    def bundle(event_id: str) -> Bundle:
        return out.setdefault(event_id, Bundle())

    with_kind = {kind: [p for p, found in kinds.items() if kind in found] for kind in (REPLACE, THREAD, REFERENCE)}
    if with_kind[REPLACE]:
        edits = await relations.latest_edits(
            [p for p in with_kind[REPLACE] if _editable(parents[p])], EDITS_PER_EVENT
        )
        found = await store.get_events(e for _, e in edits)
        for parent_id, edit_id in edits:
            if parent_id in out and out[parent_id].replace is not None:
                continue
            edit = found.get(edit_id)
            if edit is not None and edit.outcome is Outcome.ACCEPTED and _valid_edit(parents[parent_id], edit.event):
                bundle(parent_id).replace = edit
    if with_kind[THREAD]:
        summaries = await relations.threads_of(with_kind[THREAD], user_id)
        latest = await store.get_events(s.latest_id for s in summaries.values())
        for root_id, summary in summaries.items():
            last = latest.get(summary.latest_id)
            if last is None:
                continue
            participated = summary.participated or parents[root_id].sender == user_id
            bundle(root_id).thread = Thread(summary.count, last, participated)
    if with_kind[REFERENCE]:
        for parent_id, child_id in await relations.references(with_kind[REFERENCE], MAX_REFERENCES):
            bundle(parent_id).references.append(child_id)
    return out


def _editable(event: Event) -> bool:
    if event.is_state:
        return False
    relation = event_relation(event)
    return relation is None or relation.rel_type != REPLACE


def _valid_edit(original: Event, edit: Event) -> bool:
    relation = event_relation(edit)
    return (
        relation is not None and relation.rel_type == REPLACE and relation.parent_id == original.event_id
        and edit.sender == original.sender and edit.type == original.type and edit.room_id == original.room_id
        and isinstance(edit.content.get("m.new_content"), dict)
    )
