"""``unsigned.m.relations`` on served events: the bundled aggregations of
``rooms/relations.py`` serialised (an edit and a thread's latest event as whole client
events). Called by ``serialize_events`` (events.py), which every endpoint that serves
events goes through: /sync, /messages, /context, /event, /relations, /threads, /search.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from homeserver.client_api.common import client_event
from homeserver.rooms.relations import bundles_for
from homeserver.storage.events import EventStore, StoredEvent


async def add_bundles(
    store: EventStore, user_id: str, events: Sequence[StoredEvent], served: Sequence[dict[str, Any]], *,
    now_ms: int, include_room_id: bool = True, redacted: Collection[str] = (),
) -> None:
    """Put the aggregations of ``events`` into ``served`` (their client events, same
    order); a redacted event gets none."""
    bundles = await bundles_for(store, user_id, [se.event for se in events], skip=redacted)
    if not bundles:
        return
    for se, out in zip(events, served, strict=True):
        bundle = bundles.get(se.event.event_id)
        if bundle is None:
            continue
        relations: dict[str, Any] = {}
        if bundle.replace is not None:
            relations["m.replace"] = client_event(
                bundle.replace.event, now_ms=now_ms, include_room_id=include_room_id
            )
        if bundle.thread is not None:
            relations["m.thread"] = {
                "latest_event": client_event(bundle.thread.latest.event, now_ms=now_ms,
                                             include_room_id=include_room_id),
                "count": bundle.thread.count,
                "current_user_participated": bundle.thread.participated,
            }
        if bundle.references:
            relations["m.reference"] = {"chunk": [{"event_id": e} for e in bundle.references]}
        if relations:
            out.setdefault("unsigned", {})["m.relations"] = relations
