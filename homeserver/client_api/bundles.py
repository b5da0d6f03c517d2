"""``unsigned.m.relations`` on served events: the bundled aggregations of
``rooms/relations.py`` serialised (an edit and a thread's latest event as whole client
events). Called by ``serialize_events`` (events.py), which every endpoint that serves
events goes through: /sync, /messages, /context, /event, /relations, /threads, /search.

An edit or a thread's latest reply is bundled only when the user may see it (history
visibility: nothing sent after they left, or before they joined when the room forbids it)
and, for a reply, when its sender is not one they ignore (a thread's ``count`` leaves their
replies out too); for a thread whose latest reply is hidden, the newest of its last
``THREAD_FALLBACK`` replies they may see stands in (none: no ``m.thread``).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from homeserver.client_api.common import client_event
from homeserver.client_api.ignored import ignored_users
from homeserver.client_api.tokens import FIRST_POSITION
from homeserver.events.relations import THREAD
from homeserver.rooms.relations import Bundle, Thread, bundles_for
from homeserver.rooms.visibility import HistoryVisibility
from homeserver.storage.account_data import AccountDataStore
from homeserver.storage.events import EventStore, Outcome, StoredEvent
from homeserver.storage.relations import RelationStore

# Replies of a thread looked at for one the user may see when its latest is hidden from them.
THREAD_FALLBACK = 20


async def add_bundles(
    store: EventStore, user_id: str, events: Sequence[StoredEvent], served: Sequence[dict[str, Any]], *,
    now_ms: int, include_room_id: bool = True, redacted: Collection[str] = (),
) -> None:
    """Put the aggregations of ``events`` into ``served`` (their client events, same
    order); a redacted event gets none."""
    bundles = await bundles_for(store, user_id, [se.event for se in events], skip=redacted)
    if not bundles:
        return
    await _hide_unseen(store, user_id, bundles)
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


async def _visible(
    visibility: HistoryVisibility, user_id: str, events: Sequence[StoredEvent], ignored: Collection[str],
) -> set[str]:
    by_room: dict[str, list[StoredEvent]] = {}
    for se in events:
        if se.event.sender not in ignored:
            by_room.setdefault(se.event.room_id, []).append(se)
    out: set[str] = set()
    for room_id, in_room in by_room.items():
        out.update(se.event.event_id for se in await visibility.filter_for_user(user_id, room_id, in_room))
    return out


async def _hide_unseen(store: EventStore, user_id: str, bundles: dict[str, Bundle]) -> None:
    """Take out of ``bundles`` the edits and thread replies ``user_id`` may not see."""
    if not any(b.replace is not None or b.thread is not None for b in bundles.values()):
        return
    ignored = await ignored_users(AccountDataStore(store.db), user_id)
    roots = [root for root, b in bundles.items() if b.thread is not None]
    if ignored and roots:
        # Threads summed up again without the replies of those the user ignores.
        summaries = await RelationStore(store.db).threads_of(roots, user_id, sorted(ignored))
        latest_replies = await store.get_events(s.latest_id for s in summaries.values())
        for root in roots:
            bundle, summary = bundles[root], summaries.get(root)
            last = latest_replies.get(summary.latest_id) if summary is not None else None
            participated = bundle.thread.participated if bundle.thread is not None else False
            bundle.thread = Thread(summary.count, last, participated) if summary and last else None
    shown = [b.replace for b in bundles.values() if b.replace is not None]
    shown += [b.thread.latest for b in bundles.values() if b.thread is not None]
    if not shown:
        return
    visibility = HistoryVisibility(store)
    visible = await _visible(visibility, user_id, shown, ())
    for root_id, bundle in bundles.items():
        if bundle.replace is not None and bundle.replace.event.event_id not in visible:
            bundle.replace = None
        thread = bundle.thread
        if thread is None or (thread.latest.event.event_id in visible and thread.latest.event.sender not in ignored):
            continue
        bundle.thread = None
        room_id = thread.latest.event.room_id
        rows = await RelationStore(store.db).children(
            room_id, root_id, rel_type=THREAD, event_type=None, after=FIRST_POSITION,
            upto=thread.latest.stream_ordering, limit=THREAD_FALLBACK, newest_first=True,
        )
        found = await store.get_events(eid for eid, _ in rows)
        replies = [found[eid] for eid, _ in rows if eid in found and found[eid].outcome is Outcome.ACCEPTED]
        seen = await _visible(visibility, user_id, replies, ignored)
        latest = next((se for se in replies if se.event.event_id in seen), None)
        if latest is not None:
            bundle.thread = Thread(thread.count, latest, thread.participated)
