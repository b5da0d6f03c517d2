"""One room's section of /sync: timeline, state and summary, as the filter asks.

- Timeline: the newest ``room.timeline.limit`` events in (since, upto] that the timeline
  filter lets through (``filtering.py``; when it filters, at most ``MAX_SCAN`` events are
  read looking for matches, and the timeline is ``limited`` when more may match), the
  events of users the syncing user ignores left out (state events stay: they still make
  the room's state), then history visibility.
- State: the state at the start of the timeline (all of it for a full section, else what
  changed in a gap), through the state filter. With ``lazy_load_members``, member events
  only for the timeline's senders (and, in a full section, the syncing user), and only
  those this device was not already sent, unless ``include_redundant_members``. What each
  device was sent is kept in memory, bounded (``SentMembers``: at most ``MAX_DEVICES_ROOMS``
  (user, device, room) entries, least recently used dropped first, each of at most
  ``MAX_MEMBERS_PER_ROOM`` members, ``MAX_MEMBERS_TOTAL`` over all); a dropped entry only means a member event is sent
  again, which clients accept.
- Summary (``summary.py``): on a full section, or when a member event is in the section.
- ``event_fields``: each timeline and state event keeps only the fields named.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection
from typing import Any

from homeserver.client_api.common import Requester
from homeserver.client_api.events import serialize_events
from homeserver.client_api.filtering import Filter, RoomEventFilter, apply_event_fields
from homeserver.client_api.paging import event_view, keep
from homeserver.client_api.summary import room_summary
from homeserver.client_api.tokens import page_token
from homeserver.rooms.redactions import hide_unapplied
from homeserver.rooms.visibility import HistoryVisibility
from homeserver.storage.events import EventStore, Outcome, StoredEvent
from homeserver.storage.timeline import TimelineStore
from homeserver.storage.users import UserStore
from homeserver.util.clock import Clock

MAX_SCAN = 500  # events read per section looking for ones a timeline filter lets through
SCAN_BATCH = 100
MAX_DEVICES_ROOMS = 20_000
MAX_MEMBERS_PER_ROOM = 5_000
MAX_MEMBERS_TOTAL = 1_000_000


class SentMembers:
    """The member events each (user, device, room) was sent (lazy loading), bounded: at
    most ``max_entries`` keys and ``max_total`` members over all of them (each key at
    most ``MAX_MEMBERS_PER_ROOM``), the least recently used keys dropped first. Without
    the total, 20,000 keys of 5,000 members each (a remote server's puppets talking in the
    rooms of a user with many devices) could hold gigabytes."""

    def __init__(self, max_entries: int = MAX_DEVICES_ROOMS, max_total: int = MAX_MEMBERS_TOTAL) -> None:
        self.max_entries = max_entries
        self.max_total = max_total
        self._sent: OrderedDict[tuple[str, str | None, str], dict[str, str]] = OrderedDict()
        self.total = 0

    def __len__(self) -> int:
        return len(self._sent)

    def forget(self, key: tuple[str, str | None, str]) -> None:
        sent = self._sent.pop(key, None)
        if sent is not None:
            self.total -= len(sent)

    def was_sent(self, key: tuple[str, str | None, str], member: str, event_id: str) -> bool:
        sent = self._sent.get(key)
        if sent is None:
            return False
        self._sent.move_to_end(key)
        return sent.get(member) == event_id

    def record(self, key: tuple[str, str | None, str], members: dict[str, str]) -> None:
        if not members:
            return
        sent = self._sent.get(key)
        if sent is None:
            sent = self._sent[key] = {}
        self._sent.move_to_end(key)
        self.total -= len(sent)
        if len(sent) + len(members) > MAX_MEMBERS_PER_ROOM:
            sent.clear()
        sent.update(members)
        self.total += len(sent)
        while self._sent and (len(self._sent) > self.max_entries or self.total > self.max_total):
            _, dropped = self._sent.popitem(last=False)
            self.total -= len(dropped)


class RoomSections:
    def __init__(
        self, users: UserStore, events: EventStore, timeline: TimelineStore, visibility: HistoryVisibility,
        clock: Clock,
    ) -> None:
        self.users = users
        self.events = events
        self.timeline = timeline
        self.visibility = visibility
        self.clock = clock
        self.sent_members = SentMembers()

    async def _timeline(
        self, room_id: str, after: int, upto: int, limit: int, flt: RoomEventFilter, ignored: Collection[str],
    ) -> tuple[list[StoredEvent], bool]:
        """The newest ``limit`` events that pass, oldest first, and whether more may be had."""
        if flt.is_everything and not ignored:
            newest = await self.timeline.room_events(room_id, after=after, upto=upto, limit=limit + 1,
                                                     newest_first=True)
            return list(reversed(newest[:limit])), len(newest) > limit
        found: list[StoredEvent] = []
        scanned = 0
        position = upto
        while scanned < MAX_SCAN:
            batch = await self.timeline.room_events(room_id, after=after, upto=position, limit=SCAN_BATCH,
                                                    newest_first=True)
            scanned += len(batch)
            found.extend(se for se in batch if keep(se, flt, ignored))
            if len(found) > limit or len(batch) < SCAN_BATCH:
                return list(reversed(found[:limit])), len(found) > limit
            position = batch[-1].stream_ordering - 1
        return list(reversed(found[:limit])), True  # stopped scanning: more may match

    async def section(
        self, req: Requester, room_id: str, since_pos: int, upto: int, flt: Filter, *, full: bool,
        ignored: Collection[str] = (),
    ) -> dict[str, Any]:
        """Timeline (newest events in (since, upto]) and the state at its start."""
        limit = flt.timeline_limit
        events, limited = await self._timeline(room_id, 0 if full else since_pos, upto, limit,
                                               flt.room.timeline, ignored)
        if events:
            prev_batch = page_token(events[0].stream_ordering - 1)
            # History visibility: events the user may not see are left out of the timeline;
            # the state given is then the state at the first event shown (or after the last).
            visible = await self.visibility.filter_for_user(req.user_id, room_id, events)
            visible = await hide_unapplied(self.events, visible)
            if visible:
                state_ids = await self.events.get_state_ids_before(visible[0].event.event_id) or {}
            else:
                state_ids = await self.events.get_state_ids_after(events[-1].event.event_id) or {}
            events = visible
        else:
            prev_batch = page_token(upto)
            state_ids = await self.events.get_current_state_ids(room_id) if full else {}
        in_timeline = {se.event.event_id for se in events}
        state: list[StoredEvent] = []
        state_filter = flt.room.state
        if full or limited:
            wanted_ids = state_ids
            if state_filter.lazy_load_members:  # other members' events are not even read
                senders = {se.event.sender for se in events} | {req.user_id}
                wanted_ids = {k: v for k, v in state_ids.items() if k[0] != "m.room.member" or k[1] in senders}
            found = await self.events.get_events(wanted_ids.values())
            for eid in wanted_ids.values():
                se = found.get(eid)
                if se is None or se.outcome is Outcome.REJECTED or eid in in_timeline:
                    continue
                if full or se.stream_ordering > since_pos:
                    state.append(se)
        if state_filter.lazy_load_members:
            state = await self._lazy_members(req, room_id, events, state, state_ids, state_filter, full=full)
        summary: dict[str, Any] | None = None
        if full or any(se.event.type == "m.room.member" for se in (*events, *state)):
            summary = await room_summary(self.events, room_id, req.user_id)
            if state_filter.lazy_load_members and summary.get("m.heroes"):
                state = await self._hero_members(req, room_id, summary["m.heroes"], events, state, state_ids,
                                                 state_filter)
        if not state_filter.is_everything:
            state = [se for se in state if state_filter.matches(event_view(se))]
        if state_filter.limit is not None:
            state = state[: state_filter.limit]
        fields = flt.event_fields
        timeline_events = await serialize_events(
            self.users, self.events, req, events, clock=self.clock, include_room_id=False
        )
        state_events = await serialize_events(self.users, self.events, req, state, clock=self.clock,
                                              include_room_id=False)
        out: dict[str, Any] = {
            "timeline": {
                "events": [apply_event_fields(e, fields) for e in timeline_events] if fields else timeline_events,
                "limited": limited,
                "prev_batch": prev_batch,
            },
            "state": {"events": [apply_event_fields(e, fields) for e in state_events] if fields else state_events},
        }
        if summary is not None:
            out["summary"] = summary
        return out

    async def _hero_members(
        self, req: Requester, room_id: str, heroes: list[str], timeline: list[StoredEvent],
        state: list[StoredEvent], state_ids: dict[tuple[str, str], str], flt: RoomEventFilter,
    ) -> list[StoredEvent]:
        """Lazy loading: the heroes' member events, unless already in the section or, not
        asking for redundant ones, already sent to this device (the spec's MUST)."""
        key = (req.user_id, req.device_id, room_id)
        have = {se.event.state_key for se in (*timeline, *state) if se.event.type == "m.room.member"}
        ids: dict[str, str] = {}
        for hero in heroes:
            if hero in have:
                continue
            eid = state_ids.get(("m.room.member", hero)) or await self.events.current_state_id(
                room_id, ("m.room.member", hero))
            if eid is not None and (flt.include_redundant_members or not self.sent_members.was_sent(key, hero, eid)):
                ids[hero] = eid
        if not ids:
            return state
        found = await self.events.get_events(ids.values())
        added = [found[e] for e in ids.values() if e in found and found[e].outcome is not Outcome.REJECTED]
        self.sent_members.record(key, {se.event.state_key: se.event.event_id for se in added
                                       if se.event.state_key is not None})
        return [*state, *added]

    async def _lazy_members(
        self, req: Requester, room_id: str, timeline: list[StoredEvent], state: list[StoredEvent],
        state_ids: dict[tuple[str, str], str], flt: RoomEventFilter, *, full: bool,
    ) -> list[StoredEvent]:
        """Lazy loading: member events only for the timeline's senders (and the syncing user
        in a full section), not those this device already has unless redundant ones are asked."""
        key = (req.user_id, req.device_id, room_id)
        if full:
            self.sent_members.forget(key)
        wanted = {se.event.sender for se in timeline}
        if full:
            wanted.add(req.user_id)
        kept = [se for se in state if se.event.type != "m.room.member" or se.event.state_key in wanted]
        have = {se.event.state_key for se in kept if se.event.type == "m.room.member"}
        in_timeline = {se.event.state_key for se in timeline if se.event.type == "m.room.member"}
        missing = [state_ids[("m.room.member", u)] for u in sorted(wanted - have - in_timeline)
                   if ("m.room.member", u) in state_ids]
        if missing:
            found = await self.events.get_events(missing)
            kept.extend(found[eid] for eid in missing if eid in found and found[eid].outcome is not Outcome.REJECTED)
        out: list[StoredEvent] = []
        for se in kept:
            member = se.event.state_key
            if (se.event.type == "m.room.member" and member is not None and not flt.include_redundant_members
                    and self.sent_members.was_sent(key, member, se.event.event_id)):
                continue
            out.append(se)
        sent = {se.event.state_key: se.event.event_id for se in (*out, *timeline)
                if se.event.type == "m.room.member" and se.event.state_key is not None}
        self.sent_members.record(key, sent)
        return out
