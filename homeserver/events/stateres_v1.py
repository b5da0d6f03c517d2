"""State resolution for room version 1: the original algorithm (``rooms/v1.md``).

Given the room states after each forward extremity (maps of ``(type, state_key)`` to event
IDs), compute the one state before an event that cites them all as ``prev_events``:

* A *conflict* is a ``(type, state_key)`` for which the states hold different event IDs. A
  key that only some of the states hold is not a conflict: its one event is kept.
* ``R`` starts as the union of the states without the conflicting events.
* The conflicted ``m.room.power_levels`` events are sorted by ascending ``depth``, then
  descending ``sha1(event_id)``; the first goes into ``R``, and each next one goes into
  ``R`` if the authorization rules allow it in state ``R``. The first one refused ends the
  pass (the last allowed one stays).
* The same for ``m.room.join_rules``, then for each conflicted ``m.room.member`` key.
* For every other conflicted key: the event of highest ``depth``, then lowest
  ``sha1(event_id)``, that the authorization rules allow in ``R``.

Where the spec leaves room for reading, this module chooses as Synapse does
(``synapse/state/v1.py``), so that both servers reach the same state:

* Every key of one pass (for example each conflicted member) is resolved against ``R`` as
  it was when the pass began; ``R`` takes the pass's results when the pass is over. The
  result therefore does not depend on the order in which the keys are visited.
* When no event of a non-auth conflict passes the authorization rules, the one that sorts
  last (lowest ``depth``, then highest ``sha1(event_id)``) is kept.
* ``sha1`` is taken of the event ID's UTF-8 bytes; two IDs with the same hash (never seen)
  are ordered by the IDs themselves, so the order is total.
* The authorization rules see, of ``R``, the keys the auth events selection picks for the
  event (``auth_types_for_event``).
* A conflicting event missing from ``event_map`` is an error (Synapse drops it), as in
  :mod:`homeserver.events.stateres`: callers hand over every event of the state sets.

Pure and synchronous like :mod:`homeserver.events.stateres`, which dispatches here for room
versions whose ``state_res`` is ``StateResAlgorithm.V1``. Callers pass only accepted events.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence

from homeserver.events.auth import auth_types_for_event, check_auth_rules
from homeserver.events.errors import AuthError, StateResolutionError
from homeserver.events.event import Event, StateKey
from homeserver.events.versions import RoomVersion

__all__ = ["resolve_state_v1", "separate_state"]

_POWER_LEVELS_KEY: StateKey = ("m.room.power_levels", "")
# The passes of events that take part in the authorization rules, in order.
_AUTH_PASSES = ("m.room.power_levels", "m.room.join_rules", "m.room.member")


def separate_state(
    state_sets: Sequence[Mapping[StateKey, str]],
) -> tuple[dict[StateKey, str], dict[StateKey, set[str]]]:
    """The unconflicted state (every key whose states agree, or that only some hold) and
    the conflicts (each key to the two or more event IDs the states hold for it)."""
    seen: dict[StateKey, set[str]] = {}
    for state_set in state_sets:
        for key, event_id in state_set.items():
            seen.setdefault(key, set()).add(event_id)
    unconflicted: dict[StateKey, str] = {}
    conflicted: dict[StateKey, set[str]] = {}
    for key, ids in seen.items():
        if len(ids) == 1:
            unconflicted[key] = next(iter(ids))
        else:
            conflicted[key] = ids
    return unconflicted, conflicted


def resolve_state_v1(
    room_version: RoomVersion,
    state_sets: Sequence[Mapping[StateKey, str]],
    event_map: Mapping[str, Event] | Callable[[str], Event | None],
) -> dict[StateKey, str]:
    """Resolve ``state_sets`` into one state map (``(type, state_key)`` -> event ID) by the
    room version 1 algorithm. Raises :class:`StateResolutionError` when an event needed
    (a conflicting one, or one of ``R`` the authorization rules read) is not in
    ``event_map``. Without conflicts, no event is looked at."""
    unconflicted, conflicted = separate_state(state_sets)
    if not conflicted:
        return unconflicted
    return _ResolverV1(room_version, event_map).resolve(unconflicted, conflicted)


def _order_key(ev: Event) -> tuple[int, str, str]:
    """Ascending by this key is the spec's ascending ``depth``, descending ``sha1``."""
    digest = hashlib.sha1(ev.event_id.encode("utf-8")).digest()
    inverted = bytes(255 - b for b in digest).hex()
    return (ev.depth, inverted, ev.event_id)


class _ResolverV1:
    def __init__(
        self,
        room_version: RoomVersion,
        event_map: Mapping[str, Event] | Callable[[str], Event | None],
    ) -> None:
        self.room_version = room_version
        if isinstance(event_map, Mapping):
            self._lookup: Callable[[str], Event | None] = event_map.get
        else:
            self._lookup = event_map
        self._events: dict[str, Event] = {}

    def event(self, event_id: str) -> Event:
        ev = self._events.get(event_id)
        if ev is None:
            ev = self._lookup(event_id)
            if ev is None:
                raise StateResolutionError(f"missing event {event_id}")
            self._events[event_id] = ev
        return ev

    def allowed(self, ev: Event, state: Mapping[StateKey, str]) -> bool:
        """Whether the authorization rules allow ``ev`` in room state ``state``."""
        auth_state: dict[StateKey, Event] = {}
        for key in auth_types_for_event(ev):
            event_id = state.get(key)
            if event_id is not None:
                auth_state[key] = self.event(event_id)
        try:
            check_auth_rules(ev, auth_state)
        except AuthError:
            return False
        return True

    def sorted_events(self, event_ids: set[str]) -> list[Event]:
        return sorted((self.event(e) for e in event_ids), key=_order_key)

    def resolve(
        self, unconflicted: dict[StateKey, str], conflicted: dict[StateKey, set[str]]
    ) -> dict[StateKey, str]:
        resolved = dict(unconflicted)
        done: set[StateKey] = set()
        for event_type in _AUTH_PASSES:
            results: dict[StateKey, str] = {}
            for key, ids in conflicted.items():
                if key[0] == event_type:
                    results[key] = self.resolve_auth_key(key, ids, resolved)
            resolved.update(results)
            done.update(results)
        others: dict[StateKey, str] = {}
        for key, ids in conflicted.items():
            if key not in done:
                others[key] = self.resolve_other_key(ids, resolved)
        resolved.update(others)
        return resolved

    def resolve_auth_key(self, key: StateKey, ids: set[str], state: Mapping[StateKey, str]) -> str:
        """The power levels / join rules / member pass for one key: the first event in,
        then each next one while the authorization rules allow it."""
        ordered = self.sorted_events(ids)
        trial = dict(state)
        winner = ordered[0]
        trial[key] = winner.event_id
        for ev in ordered[1:]:
            if not self.allowed(ev, trial):
                break
            winner = ev
            trial[key] = ev.event_id
        return winner.event_id

    def resolve_other_key(self, ids: set[str], state: Mapping[StateKey, str]) -> str:
        """Highest depth, lowest hash first: the first event allowed in ``state``."""
        ordered = self.sorted_events(ids)
        ordered.reverse()
        for ev in ordered:
            if self.allowed(ev, state):
                return ev.event_id
        return ordered[-1].event_id
