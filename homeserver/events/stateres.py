"""State resolution for room versions 10, 11 (algorithm v2) and 12 (algorithm v2.1).

Given the room states after each forward extremity (maps of ``(type, state_key)`` to event
IDs), compute the single room state before an event that cites them all as ``prev_events``,
as the spec's "State resolution" section for room versions 2+ describes
(``rooms/fragments/v2-state-res.md``, with the room version 12 changes of ``rooms/v12.md``).

Pure and synchronous: events come from ``event_map`` (a mapping or a lookup function that
returns every event of the state sets and of their auth chains). The authorization rules
come from :mod:`homeserver.events.auth`.

Where the spec leaves room for reading, this module chooses as follows:

* The *full auth chain* of a state set counts the state set's own events as well as their
  auth chains. The two readings differ only for events that are in every state set (the
  unconflicted state): counting them keeps them out of the auth difference, so state that
  all inputs agree on is not resolved again.
* The reverse topological power ordering orders ``X`` by auth-chain reachability (``y``
  before ``x`` when ``y`` is in the auth chain of ``x``), which also holds when the path
  from ``x`` to ``y`` passes through events outside ``X``.
* When the partially resolved state holds no ``m.room.power_levels`` event, the mainline is
  empty and every event has mainline position infinity.
* Room version 12 events do not cite ``m.room.create``: it is added to every auth state from
  the room ID (the create event's ID with sigil ``!``).
* Rejection of auth events is not known here: callers pass only accepted events (the spec
  notes that events rejected against their auth chain never take part).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable, Mapping, Sequence

from homeserver.events.auth import auth_types_for_event, check_auth_rules
from homeserver.events.errors import AuthError, StateResolutionError
from homeserver.events.event import Event, StateKey
from homeserver.events.power import get_power_level, is_power_event
from homeserver.events.stateres_v1 import resolve_state_v1
from homeserver.events.versions import RoomVersion, StateResAlgorithm

__all__ = ["EventLookup", "resolve_state"]

EventLookup = Mapping[str, Event] | Callable[[str], Event | None]

_CREATE_KEY: StateKey = ("m.room.create", "")
_POWER_LEVELS_KEY: StateKey = ("m.room.power_levels", "")


def resolve_state(
    room_version: RoomVersion,
    state_sets: Sequence[Mapping[StateKey, str]],
    event_map: EventLookup,
) -> dict[StateKey, str]:
    """Resolve ``state_sets`` into one state map (``(type, state_key)`` -> event ID).

    Raises :class:`StateResolutionError` when an event needed is missing from ``event_map``
    or the auth graph has a cycle. When every state set is the same (or there is only one)
    the result is returned without looking at any event.
    """
    if not state_sets:
        return {}
    first = state_sets[0]
    if all(other == first for other in state_sets[1:]):
        return dict(first)
    if room_version.state_res is StateResAlgorithm.V1:  # room version 1: stateres_v1.py
        return resolve_state_v1(room_version, state_sets, event_map)
    return _Resolver(room_version, event_map).resolve(state_sets)


class _Resolver:
    """One resolution run: the event lookup plus the caches it fills."""

    def __init__(self, room_version: RoomVersion, event_map: EventLookup) -> None:
        self.room_version = room_version
        if isinstance(event_map, Mapping):
            self._lookup: Callable[[str], Event | None] = event_map.get
        else:
            self._lookup = event_map
        self._events: dict[str, Event] = {}
        self._chains: dict[str, frozenset[str]] = {}
        self._pl_parent: dict[str, str | None] = {}
        self._create_event: Event | None = None

    # -- event access ------------------------------------------------------------------

    def event(self, event_id: str) -> Event:
        ev = self._events.get(event_id)
        if ev is None:
            ev = self._lookup(event_id)
            if ev is None:
                raise StateResolutionError(f"missing event {event_id}")
            self._events[event_id] = ev
        return ev

    def create_event_for(self, ev: Event) -> Event:
        """The v12 create event implied by the room ID of ``ev``."""
        if self._create_event is not None and self._create_event.room_id == ev.room_id:
            return self._create_event
        if not ev.room_id.startswith("!"):
            raise StateResolutionError(f"event {ev.event_id} has no usable room ID")
        self._create_event = self.event("$" + ev.room_id[1:])
        return self._create_event

    # -- auth chains -------------------------------------------------------------------

    def auth_chain(self, event_id: str) -> frozenset[str]:
        """Every event reachable through ``auth_events`` from ``event_id`` (not itself).

        Memoised per event and computed by an explicit post-order walk (no recursion).
        """
        cached = self._chains.get(event_id)
        if cached is not None:
            return cached
        in_progress: set[str] = set()
        stack: list[tuple[str, bool]] = [(event_id, False)]
        while stack:
            node, expanded = stack.pop()
            if node in self._chains:
                continue
            auth_ids = self.event(node).auth_events
            if not expanded:
                if node in in_progress:
                    raise StateResolutionError(f"auth_events cycle through {node}")
                in_progress.add(node)
                stack.append((node, True))
                stack.extend((a, False) for a in auth_ids if a not in self._chains)
                continue
            chain: set[str] = set(auth_ids)
            for a in auth_ids:
                chain |= self._chains[a]
            self._chains[node] = frozenset(chain)
            in_progress.discard(node)
        return self._chains[event_id]

    def closure(self, starts: Iterable[str], stop: set[str]) -> set[str]:
        """``starts`` plus everything reachable through ``auth_events``, not entering
        (nor including) events in ``stop``. A plain walk: no per-event sets."""
        seen: set[str] = set()
        todo = [s for s in starts if s not in stop]
        while todo:
            node = todo.pop()
            if node in seen:
                continue
            seen.add(node)
            for a in self.event(node).auth_events:
                if a not in seen and a not in stop:
                    todo.append(a)
        return seen

    # -- helpers for orderings and auth --------------------------------------------------

    def auth_events_state(self, ev: Event) -> dict[StateKey, Event]:
        """The state an event's own ``auth_events`` describe (plus the v12 create event)."""
        state: dict[StateKey, Event] = {}
        for a in ev.auth_events:
            auth_ev = self.event(a)
            if auth_ev.state_key is not None:
                state[auth_ev.state_tuple] = auth_ev
        if self.room_version.create_event_implied_in_auth and ev.type != "m.room.create":
            state.setdefault(_CREATE_KEY, self.create_event_for(ev))
        return state

    def sender_power(self, ev: Event) -> int | float:
        return get_power_level(ev.sender, self.auth_events_state(ev))

    def power_levels_parent(self, event_id: str) -> str | None:
        """The ``m.room.power_levels`` event among the ``auth_events`` of an event."""
        if event_id in self._pl_parent:
            return self._pl_parent[event_id]
        parent: str | None = None
        for a in self.event(event_id).auth_events:
            auth_ev = self.event(a)
            if auth_ev.type == "m.room.power_levels" and auth_ev.state_key == "":
                parent = a
                break
        self._pl_parent[event_id] = parent
        return parent

    # -- the algorithm -----------------------------------------------------------------

    def resolve(self, state_sets: Sequence[Mapping[StateKey, str]]) -> dict[StateKey, str]:
        # Unconflicted state map and conflicted state set.
        unconflicted: dict[StateKey, str] = {}
        conflicted: set[str] = set()
        all_keys: set[StateKey] = set()
        for state_set in state_sets:
            all_keys.update(state_set.keys())
        for key in all_keys:
            values = [state_set.get(key) for state_set in state_sets]
            value = values[0]
            if value is not None and all(v == value for v in values):
                unconflicted[key] = value
            else:
                conflicted.update(v for v in values if v is not None)

        # Auth difference: union minus intersection of the full auth chains C_i. Every C_i
        # holds the closure of the unconflicted events, so only the closure of each set's
        # conflicted events beyond that common part can differ.
        common = self.closure(unconflicted.values(), stop=set())
        extras = [
            self.closure((v for v in state_set.values() if v in conflicted), stop=common)
            for state_set in state_sets
        ]
        auth_difference = extras[0].union(*extras[1:]) - extras[0].intersection(*extras[1:])

        # Full conflicted set (v2.1: plus the conflicted state subgraph).
        full_conflicted = conflicted | auth_difference
        if self.room_version.state_res is StateResAlgorithm.V2_1:
            full_conflicted |= self.conflicted_subgraph(conflicted)

        # 1. Power events of the full conflicted set, enlarged with the events of their auth
        #    chains that are in the full conflicted set, sorted by reverse topological power
        #    ordering.
        power_events = {e for e in full_conflicted if is_power_event(self.event(e))}
        selected = set(power_events)
        for p in power_events:
            selected |= self.auth_chain(p) & full_conflicted
        sorted_power = self.reverse_topological_power_order(selected)

        # 2. Iterative auth checks on that list, starting from the unconflicted state map
        #    (v2) or from an empty state map (v2.1), give the partially resolved state.
        if self.room_version.state_res is StateResAlgorithm.V2_1:
            partial: dict[StateKey, str] = {}
        else:
            partial = dict(unconflicted)
        self.iterative_auth_checks(sorted_power, partial)

        # 3. The remaining events, by mainline ordering based on the power levels event of
        #    the partially resolved state.
        remaining = full_conflicted - selected
        sorted_remaining = self.mainline_order(remaining, partial.get(_POWER_LEVELS_KEY))

        # 4. Iterative auth checks on the partially resolved state and that list.
        self.iterative_auth_checks(sorted_remaining, partial)

        # 5. Replace any event by the one of the unconflicted state map with the same key.
        #    (Unchanged in v2.1: the unconflicted state always wins in the end.)
        partial.update(unconflicted)
        return partial

    def conflicted_subgraph(self, conflicted: set[str]) -> set[str]:
        """Events on some ``auth_events`` path between two conflicted events (endpoints
        included): reachable from the conflicted set and reaching it."""
        reachable = self.closure(conflicted, stop=set())
        parents: dict[str, list[str]] = {}
        for node in reachable:
            for a in self.event(node).auth_events:
                parents.setdefault(a, []).append(node)
        subgraph: set[str] = set()
        todo = list(conflicted)
        while todo:
            node = todo.pop()
            if node in subgraph:
                continue
            subgraph.add(node)
            todo.extend(p for p in parents.get(node, ()) if p not in subgraph)
        return subgraph

    def reverse_topological_power_order(self, event_ids: set[str]) -> list[str]:
        """Kahn's algorithm over the auth DAG restricted to ``event_ids``, taking at each
        step the smallest candidate by (sender power descending, origin_server_ts, ID)."""
        waiting_on: dict[str, int] = {}
        dependents: dict[str, list[str]] = {e: [] for e in event_ids}
        for e in event_ids:
            deps = self.auth_chain(e) & event_ids
            waiting_on[e] = len(deps)
            for d in deps:
                dependents[d].append(e)

        def sort_key(event_id: str) -> tuple[float, int, str]:
            ev = self.event(event_id)
            return (-float(self.sender_power(ev)), ev.origin_server_ts, event_id)

        heap = [sort_key(e) for e, n in waiting_on.items() if n == 0]
        heapq.heapify(heap)
        ordered: list[str] = []
        while heap:
            _, _, e = heapq.heappop(heap)
            ordered.append(e)
            for d in dependents[e]:
                waiting_on[d] -= 1
                if waiting_on[d] == 0:
                    heapq.heappush(heap, sort_key(d))
        if len(ordered) != len(event_ids):  # pragma: no cover - auth_chain raises first
            raise StateResolutionError("auth_events cycle among power events")
        return ordered

    def mainline_order(self, event_ids: set[str], power_levels_id: str | None) -> list[str]:
        """Sort by mainline position (greater first), origin_server_ts, then event ID."""
        mainline_index: dict[str, int] = {}
        current = power_levels_id
        while current is not None and current not in mainline_index:
            mainline_index[current] = len(mainline_index)
            current = self.power_levels_parent(current)

        positions: dict[str, float] = {}

        def position(event_id: str) -> float:
            # Walk e_1, e_2, ... until one is on the mainline; memoise along the way.
            walked: list[str] = []
            found = math.inf
            current = self.power_levels_parent(event_id)
            while current is not None:
                if current in mainline_index:
                    found = float(mainline_index[current])
                    break
                if current in positions:
                    found = positions[current]
                    break
                walked.append(current)
                current = self.power_levels_parent(current)
            # Each walked PL event has the same first mainline ancestor as event_id.
            for w in walked:
                positions[w] = found
            return found

        def sort_key(event_id: str) -> tuple[float, int, str]:
            return (-position(event_id), self.event(event_id).origin_server_ts, event_id)

        return sorted(event_ids, key=sort_key)

    def iterative_auth_checks(self, event_ids: list[str], state: dict[StateKey, str]) -> None:
        """Apply each event to ``state`` (in place) if the auth rules allow it against
        ``state``, falling back to the event's own auth events for keys ``state`` lacks."""
        for event_id in event_ids:
            ev = self.event(event_id)
            if ev.state_key is None:
                continue
            own_auth = self.auth_events_state(ev)
            auth_state: dict[StateKey, Event] = {}
            for key in auth_types_for_event(ev):
                in_state = state.get(key)
                if in_state is not None:
                    auth_state[key] = self.event(in_state)
                elif key in own_auth:
                    auth_state[key] = own_auth[key]
            if (
                self.room_version.create_event_implied_in_auth
                and ev.type != "m.room.create"
                and _CREATE_KEY not in auth_state
            ):
                create_id = state.get(_CREATE_KEY)
                auth_state[_CREATE_KEY] = (
                    self.event(create_id) if create_id is not None else self.create_event_for(ev)
                )
            try:
                check_auth_rules(ev, auth_state)
            except AuthError:
                continue
            state[ev.state_tuple] = event_id
