"""Filters (the spec's ``POST /user/{userId}/filter`` body): parsing and matching, pure.

``parse_filter`` checks a filter (400 ``M_BAD_JSON`` naming the field when it is not one)
and gives a ``Filter``; a stored filter round-trips as the JSON the client posted.
Matching follows the spec's EventFilter and RoomEventFilter:

- ``types`` / ``not_types``: event types; ``*`` matches any run of characters (``m.*``);
  ``not_types`` wins; an absent ``types`` includes all, an empty one includes none.
- ``senders`` / ``not_senders``, ``rooms`` / ``not_rooms``: exact IDs, the ``not_`` lists win.
- ``contains_url``: true keeps only events whose content has a string ``url``, false only
  those without.
- ``limit``: the most events of the kind returned (``filter_events`` keeps the first ones;
  callers that page pick the newest).
- ``lazy_load_members`` / ``include_redundant_members`` (room state and timeline filters).
- ``event_fields``: dotted paths (``content.body``; ``\\.`` is a literal dot, ``\\\\`` a
  backslash) of the fields each client event keeps (``apply_event_fields``).
- ``room.include_leave``, ``room.timeline.limit`` (1..``MAX_TIMELINE_LIMIT``, default 10).

``filter_events(filter, events)`` is the one entry for a list of client-format events
(dicts with ``type``, ``sender``, ``content`` and, for room events, ``room_id``): the
presence, account data and ephemeral sections use it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from homeserver.errors import MatrixError
from homeserver.util.dotted import split_path

DEFAULT_TIMELINE_LIMIT = 10
MAX_TIMELINE_LIMIT = 100
MAX_LIST = 1000  # entries in one of a filter's lists
MAX_TYPE_VERDICTS = 1000  # event types whose verdict one filter keeps
MAX_FIELD_DEPTH = 32  # keys in one event_fields path
MAX_FIELD_KEYS = 1000  # keys in all of a filter's event_fields paths


def _bad(message: str) -> MatrixError:
    return MatrixError(400, "M_BAD_JSON", message)


def type_matches(glob: str, event_type: str) -> bool:
    """Whether ``event_type`` matches a filter's type entry (``*`` any run of characters).

    Matched piece by piece (the text before the first ``*`` is a prefix, after the last a
    suffix, each piece between found leftmost in turn): linear in the type's length for
    any glob, where a regular expression of ``.*`` runs backtracks exponentially
    (``*a*a*a*a*b`` against ``aaaa…``)."""
    if "*" not in glob:
        return glob == event_type
    first, *middle, last = glob.split("*")
    if len(first) + len(last) > len(event_type) or not event_type.startswith(first) or not event_type.endswith(last):
        return False
    position, end = len(first), len(event_type) - len(last)
    for piece in middle:
        found = event_type.find(piece, position, end)
        if found < 0:
            return False
        position = found + len(piece)
    return True


@dataclass(frozen=True, slots=True)
class EventFilter:
    """The spec's EventFilter (and the event part of a RoomEventFilter)."""

    limit: int | None = None
    types: tuple[str, ...] | None = None
    not_types: tuple[str, ...] = ()
    senders: tuple[str, ...] | None = None
    not_senders: tuple[str, ...] = ()
    # Whether each event type seen passes types/not_types: up to 2 x MAX_LIST globs, worked
    # out once per type (an initial /sync matches thousands of events, of a few types).
    _type_verdicts: dict[str, bool] = field(default_factory=dict, init=False, compare=False, repr=False)
    # The ID lists (up to MAX_LIST each) as sets, made on first use: a tuple's `in` read
    # thousands of entries for each of the thousands of events an initial /sync matches.
    _sets: dict[str, frozenset[str]] = field(default_factory=dict, init=False, compare=False, repr=False)

    def _set(self, name: str) -> frozenset[str]:
        found = self._sets.get(name)
        if found is None:
            found = self._sets[name] = frozenset(getattr(self, name) or ())
        return found

    def allows_type(self, event_type: str) -> bool:
        verdict = self._type_verdicts.get(event_type)
        if verdict is None:
            verdict = not any(type_matches(t, event_type) for t in self.not_types) and (
                self.types is None or any(type_matches(t, event_type) for t in self.types))
            if len(self._type_verdicts) >= MAX_TYPE_VERDICTS:
                self._type_verdicts.clear()
            self._type_verdicts[event_type] = verdict
        return verdict

    def matches(self, event: Mapping[str, Any]) -> bool:
        event_type = event.get("type")
        if not isinstance(event_type, str) or not self.allows_type(event_type):
            return False
        sender = event.get("sender")
        if sender is not None:
            if sender in self._set("not_senders"):
                return False
            if self.senders is not None and sender not in self._set("senders"):
                return False
        return True


@dataclass(frozen=True, slots=True)
class RoomEventFilter(EventFilter):
    rooms: tuple[str, ...] | None = None
    not_rooms: tuple[str, ...] = ()
    contains_url: bool | None = None
    lazy_load_members: bool = False
    include_redundant_members: bool = False
    unread_thread_notifications: bool = False  # per-thread unread counts in /sync (push/notify.py)

    def allows_room(self, room_id: str) -> bool:
        return room_id not in self._set("not_rooms") and (self.rooms is None or room_id in self._set("rooms"))

    def matches(self, event: Mapping[str, Any], room_id: str | None = None) -> bool:
        if not EventFilter.matches(self, event):
            return False
        room = room_id if room_id is not None else event.get("room_id")
        if isinstance(room, str) and not self.allows_room(room):
            return False
        if self.contains_url is not None:
            content = event.get("content")
            has_url = isinstance(content, Mapping) and isinstance(content.get("url"), str)
            if has_url != self.contains_url:
                return False
        return True

    @property
    def is_everything(self) -> bool:
        """Whether the filter lets every event through (no matching needed)."""
        return (self.types is None and not self.not_types and self.senders is None and not self.not_senders
                and self.rooms is None and not self.not_rooms and self.contains_url is None)


@dataclass(frozen=True, slots=True)
class RoomFilter:
    rooms: tuple[str, ...] | None = None
    not_rooms: tuple[str, ...] = ()
    include_leave: bool = False
    timeline: RoomEventFilter = field(default_factory=lambda: RoomEventFilter(limit=DEFAULT_TIMELINE_LIMIT))
    state: RoomEventFilter = field(default_factory=RoomEventFilter)
    ephemeral: RoomEventFilter = field(default_factory=RoomEventFilter)
    account_data: RoomEventFilter = field(default_factory=RoomEventFilter)

    def allows_room(self, room_id: str) -> bool:
        return room_id not in self.not_rooms and (self.rooms is None or room_id in self.rooms)


@dataclass(frozen=True, slots=True)
class Filter:
    room: RoomFilter = field(default_factory=RoomFilter)
    presence: EventFilter = field(default_factory=EventFilter)
    account_data: EventFilter = field(default_factory=EventFilter)
    event_fields: tuple[tuple[str, ...], ...] | None = None
    event_format: str = "client"

    @property
    def timeline_limit(self) -> int:
        return self.room.timeline.limit or DEFAULT_TIMELINE_LIMIT

    @property
    def include_leave(self) -> bool:
        return self.room.include_leave

    @property
    def lazy_load_members(self) -> bool:
        return self.room.state.lazy_load_members

    @property
    def unread_thread_notifications(self) -> bool:
        return self.room.timeline.unread_thread_notifications


# ---------------------------------------------------------------------- parsing


def _object(value: Any, name: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad(f"{name} must be an object")
    return value


def _strings(body: Mapping[str, Any], key: str, name: str) -> tuple[str, ...] | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad(f"{name}.{key} must be a list of strings")
    if len(value) > MAX_LIST:
        raise _bad(f"{name}.{key} has more than {MAX_LIST} entries")
    return tuple(value)


def _bool(body: Mapping[str, Any], key: str, name: str, default: bool | None) -> bool | None:
    value = body.get(key, default)
    if value is not None and not isinstance(value, bool):
        raise _bad(f"{name}.{key} must be a boolean")
    return value


def _limit(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get("limit")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"{name}.limit must be an integer")
    return value


def parse_event_filter(value: Any, name: str) -> EventFilter:
    body = _object(value, name)
    limit = _limit(body, name)
    return EventFilter(
        limit=None if limit is None else max(1, limit),
        types=_strings(body, "types", name),
        not_types=_strings(body, "not_types", name) or (),
        senders=_strings(body, "senders", name),
        not_senders=_strings(body, "not_senders", name) or (),
    )


def parse_room_event_filter(value: Any, name: str, *, default_limit: int | None = None,
                            max_limit: int | None = None) -> RoomEventFilter:
    base = parse_event_filter(value, name)
    body = _object(value, name)
    limit = base.limit if base.limit is not None else default_limit
    if limit is not None and max_limit is not None:
        limit = min(limit, max_limit)
    return RoomEventFilter(
        limit=limit, types=base.types, not_types=base.not_types, senders=base.senders,
        not_senders=base.not_senders,
        rooms=_strings(body, "rooms", name),
        not_rooms=_strings(body, "not_rooms", name) or (),
        contains_url=_bool(body, "contains_url", name, None),
        lazy_load_members=bool(_bool(body, "lazy_load_members", name, False)),
        include_redundant_members=bool(_bool(body, "include_redundant_members", name, False)),
        unread_thread_notifications=bool(_bool(body, "unread_thread_notifications", name, False)),
    )


def parse_filter(value: Any) -> Filter:
    """A filter as posted (400 M_BAD_JSON naming the first field that is not as the spec says)."""
    if not isinstance(value, dict):
        raise _bad("A filter must be a JSON object")
    room = _object(value.get("room"), "filter.room")
    include_leave = _bool(room, "include_leave", "filter.room", False)
    fields = _strings(value, "event_fields", "filter")
    paths = None if fields is None else tuple(dict.fromkeys(split_path(f) for f in fields))
    # Each path is walked for every event served: 1,000 paths of 500 keys cost 50 ms an event.
    if paths is not None and (any(len(p) > MAX_FIELD_DEPTH for p in paths)
                              or sum(len(p) for p in paths) > MAX_FIELD_KEYS):
        raise _bad(f"filter.event_fields: at most {MAX_FIELD_DEPTH} keys a path, {MAX_FIELD_KEYS} in all")
    event_format = value.get("event_format", "client")
    if event_format not in ("client", "federation"):
        raise _bad("filter.event_format must be client or federation")
    return Filter(
        room=RoomFilter(
            rooms=_strings(room, "rooms", "filter.room"),
            not_rooms=_strings(room, "not_rooms", "filter.room") or (),
            include_leave=bool(include_leave),
            timeline=parse_room_event_filter(room.get("timeline"), "filter.room.timeline",
                                             default_limit=DEFAULT_TIMELINE_LIMIT, max_limit=MAX_TIMELINE_LIMIT),
            state=parse_room_event_filter(room.get("state"), "filter.room.state"),
            ephemeral=parse_room_event_filter(room.get("ephemeral"), "filter.room.ephemeral"),
            account_data=parse_room_event_filter(room.get("account_data"), "filter.room.account_data"),
        ),
        presence=parse_event_filter(value.get("presence"), "filter.presence"),
        account_data=parse_event_filter(value.get("account_data"), "filter.account_data"),
        event_fields=paths,
        event_format=event_format,
    )


# ---------------------------------------------------------------------- applying


def filter_events(flt: EventFilter, events: Iterable[Mapping[str, Any]],
                  room_id: str | None = None) -> list[Any]:
    """The events ``flt`` lets through, at most its ``limit`` (the first ones). ``room_id``
    names the room of room events that carry no ``room_id`` key."""
    out: list[Any] = []
    for event in events:
        ok = flt.matches(event, room_id) if isinstance(flt, RoomEventFilter) else flt.matches(event)
        if ok:
            out.append(event)
            if flt.limit is not None and len(out) >= flt.limit:
                break
    return out


def apply_event_fields(event: Mapping[str, Any], fields: Sequence[Sequence[str]] | None) -> dict[str, Any]:
    """``event`` with only the fields named by ``fields`` (all of them when None)."""
    if fields is None:
        return dict(event)
    out: dict[str, Any] = {}
    for path in fields:
        if not path:
            continue
        source: Any = event
        for key in path[:-1]:
            source = source.get(key) if isinstance(source, Mapping) else None
        if not isinstance(source, Mapping) or path[-1] not in source:
            continue
        target = out
        for key in path[:-1]:
            nxt = target.get(key)
            if not isinstance(nxt, dict):
                nxt = target[key] = {}
            target = nxt
        target[path[-1]] = source[path[-1]]
    return out
