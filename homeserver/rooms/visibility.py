"""History visibility (``m.room.history_visibility``): which events of a room a user, or
another server, may see.

Each event is judged by the visibility in force at it and the viewer's membership at it,
both read from the state before the event (its state group). Two extensions, per the
client-server spec's "Server behaviour": an ``m.room.history_visibility`` event is also
judged by the visibility it sets (the state after it), and a user's own member event by
the membership it sets. A missing or unknown visibility counts as ``shared``.

Users (client ``/messages``, ``/event``, ``/sync`` timelines), in order:
1. ``world_readable``: visible;
2. the user's membership at the event was ``join``: visible;
3. ``shared`` and the user joined the room at some point after the event (currently
   joined, or a join event of theirs later in the stream): visible;
4. ``invited`` and the user's membership at the event was ``invite``: visible;
5. otherwise hidden (left out of the answer).

Servers (federation ``/backfill``, ``/get_missing_events``, ``/event``), the same rules
with the server's users as the viewer: ``world_readable`` events are visible to any
server; ``shared`` ones to a server with a member joined now (it "joined after") or joined
at the event; ``invited`` ones to a server that had a member invited or joined at the
event; ``joined`` ones to a server that had a member joined at the event. To a server in
the room an event it may not see is sent redacted (the DAG stays walkable and the
signatures still verify), not left out; a server not in the room gets only what it may
see whole (``/event`` answers 403 otherwise).

The facts read here (the visibility an event sets, the membership a member event sets)
never change, so they are cached (bounded); state maps come from the event store's
state-group cache.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from homeserver.events.event import Event, StateKey
from homeserver.storage.events import EventStore, StoredEvent
from homeserver.util.lru import LruCache

HISTORY_VISIBILITY: StateKey = ("m.room.history_visibility", "")
WORLD_READABLE = "world_readable"
SHARED = "shared"
INVITED = "invited"
JOINED = "joined"
KNOWN_VISIBILITIES = frozenset({WORLD_READABLE, SHARED, INVITED, JOINED})
DEFAULT_VISIBILITY = SHARED
FACT_CACHE_SIZE = 50_000
_EMPTY: Mapping[StateKey, str] = {}


class ServerView(enum.Enum):
    FULL = "full"
    REDACTED = "redacted"


def visibility_value(content: Mapping[str, object]) -> str:
    """The visibility an ``m.room.history_visibility`` content sets (unknown: shared)."""
    value = content.get("history_visibility")
    return value if isinstance(value, str) and value in KNOWN_VISIBILITIES else DEFAULT_VISIBILITY


def user_may_see(visibility: str, membership: str | None, joined_later: bool) -> bool:
    """The spec's rules 1-5 for one (visibility, membership) pair."""
    if visibility == WORLD_READABLE:
        return True
    if membership == "join":
        return True
    if visibility == SHARED and joined_later:
        return True
    return visibility == INVITED and membership == "invite"


def server_may_see(visibility: str, memberships: Iterable[str | None], in_room: bool) -> bool:
    """Whether a server with these memberships (of its users) at an event may see it;
    ``in_room``: the server has a member joined now (so ``shared`` history is its own)."""
    if visibility == WORLD_READABLE or (visibility == SHARED and in_room):
        return True
    for membership in memberships:
        if membership == "join" or (visibility == INVITED and membership == "invite"):
            return True
    return False


def _server_of(user_id: str) -> str:
    return user_id.split(":", 1)[1] if ":" in user_id else ""


@dataclass(frozen=True, slots=True)
class _At:
    """The state before and after one event."""

    before: Mapping[StateKey, str]
    after: Mapping[StateKey, str]


class HistoryVisibility:
    def __init__(self, store: EventStore, cache_size: int = FACT_CACHE_SIZE) -> None:
        self._store = store
        # event ID -> the visibility it sets (hv events) or the membership (member events).
        self._facts: LruCache[str, str | None] = LruCache(cache_size)

    # ------------------------------------------------------------------ users

    async def filter_for_user(
        self, user_id: str, room_id: str, events: Sequence[StoredEvent]
    ) -> list[StoredEvent]:
        """``events`` (same order) without those ``user_id`` may not see."""
        if not events:
            return []
        states = await self._states([se.event.event_id for se in events])
        member_key: StateKey = ("m.room.member", user_id)
        wanted: set[str] = set()
        for at in states.values():
            for state in (at.before, at.after):
                for key in (HISTORY_VISIBILITY, member_key):
                    if key in state:
                        wanted.add(state[key])
        facts = await self._facts_of(wanted)
        last_join: int | None = None
        looked_up = False  # the user's last join is looked up at most once, when needed
        out: list[StoredEvent] = []
        for se in events:
            event = se.event
            at = states.get(event.event_id, _At(_EMPTY, _EMPTY))
            visibilities = [self._visibility(at.before, facts)]
            if event.type == HISTORY_VISIBILITY[0] and event.state_key == "":
                visibilities.append(self._visibility(at.after, facts))
            memberships = [facts.get(at.before.get(member_key, ""))]
            if event.type == "m.room.member" and event.state_key == user_id:
                memberships.append(facts.get(at.after.get(member_key, "")))
            visible = False
            for visibility in visibilities:
                for membership in memberships:
                    if user_may_see(visibility, membership, False):
                        visible = True
                    elif visibility == SHARED:
                        if not looked_up:
                            last_join, looked_up = await self._last_join(user_id, room_id), True
                        joined_later = last_join is not None and last_join >= se.stream_ordering
                        visible = user_may_see(visibility, membership, joined_later)
                    if visible:
                        break
                if visible:
                    break
            if visible:
                out.append(se)
        return out

    async def user_may_see_event(self, user_id: str, se: StoredEvent) -> bool:
        return bool(await self.filter_for_user(user_id, se.event.room_id, [se]))

    async def _last_join(self, user_id: str, room_id: str) -> int | None:
        """The stream ordering of the user's current join (a large number: every event is
        before it), else of their latest join event in the room, else None."""
        membership, _ = await self._store.current_membership(room_id, user_id)
        if membership == "join":
            return 2**62
        return await self._store.last_join_ordering(room_id, user_id)

    # ------------------------------------------------------------------ servers

    async def server_views(
        self, server_name: str, events: Sequence[Event], *, in_room: bool
    ) -> dict[str, ServerView]:
        """For each event, whether ``server_name`` (``in_room``: with a member joined now)
        may see it whole, or only redacted."""
        if not events:
            return {}
        states = await self._states([e.event_id for e in events])
        suffix = ":" + server_name
        members_of: dict[int, list[str]] = {}  # id(state map) -> the server's member event IDs

        def server_members(state: Mapping[StateKey, str]) -> list[str]:
            found = members_of.get(id(state))
            if found is None:
                found = [eid for (t, sk), eid in state.items()
                         if t == "m.room.member" and sk.endswith(suffix) and _server_of(sk) == server_name]
                members_of[id(state)] = found
            return found

        wanted: set[str] = set()
        for at in states.values():
            for state in (at.before, at.after):
                if HISTORY_VISIBILITY in state:
                    wanted.add(state[HISTORY_VISIBILITY])
                wanted.update(server_members(state))
        facts = await self._facts_of(wanted)
        out: dict[str, ServerView] = {}
        for event in events:
            at = states.get(event.event_id, _At(_EMPTY, _EMPTY))
            visibilities = [self._visibility(at.before, facts)]
            if event.type == HISTORY_VISIBILITY[0] and event.state_key == "":
                visibilities.append(self._visibility(at.after, facts))
            memberships = [facts.get(m) for m in server_members(at.before)]
            if event.type == "m.room.member" and event.state_key is not None \
                    and _server_of(event.state_key) == server_name:
                memberships += [facts.get(m) for m in server_members(at.after)]
            visible = any(server_may_see(v, memberships, in_room) for v in visibilities)
            out[event.event_id] = ServerView.FULL if visible else ServerView.REDACTED
        return out

    # ------------------------------------------------------------------ reading

    @staticmethod
    def _visibility(state: Mapping[StateKey, str], facts: Mapping[str, str | None]) -> str:
        hv_id = state.get(HISTORY_VISIBILITY)
        if hv_id is None:
            return DEFAULT_VISIBILITY
        return facts.get(hv_id) or DEFAULT_VISIBILITY

    async def _states(self, event_ids: Sequence[str]) -> dict[str, _At]:
        """The state before and after each event that has state (outliers have none)."""
        rows = await self._store.state_groups_of(event_ids)
        groups: dict[int, Mapping[StateKey, str]] = {}
        out: dict[str, _At] = {}
        for event_id, before, after in rows:
            maps: list[Mapping[StateKey, str]] = []
            for group in (before, after):
                if group is None:
                    maps.append(_EMPTY)
                    continue
                if group not in groups:
                    groups[group] = await self._store.load_state_group(group)
                maps.append(groups[group])
            out[event_id] = _At(maps[0], maps[1] if after is not None else maps[0])
        return out

    async def _facts_of(self, event_ids: Iterable[str]) -> dict[str, str | None]:
        """For history-visibility events the visibility they set; for member events the
        membership they set."""
        out: dict[str, str | None] = {}
        missing: list[str] = []
        for event_id in event_ids:
            if event_id in self._facts:
                out[event_id] = self._facts[event_id]
            else:
                missing.append(event_id)
        if missing:
            found = await self._store.get_events(missing)
            for event_id in missing:
                se = found.get(event_id)
                if se is None:
                    continue
                fact: str | None
                if se.event.type == HISTORY_VISIBILITY[0]:
                    fact = visibility_value(se.event.content)
                else:
                    fact = se.event.membership
                out[event_id] = fact
                self._facts[event_id] = fact
        return out
