"""What an event says about other events and what search indexes of it (pure: no I/O).

``relation_of``: an event's ``content["m.relates_to"]`` with a ``rel_type`` and an
``event_id`` (``m.thread``, ``m.replace``, ``m.reference``, ``m.annotation`` or any other
type), the parent it relates to. A reply (``m.in_reply_to`` only) is not a relation. For
``m.thread`` the parent is the thread root. State events never relate (the spec leaves
them out of aggregations).

``searchable_of``: the one text of an event that ``/search`` looks at, with its key
(``content.body`` of ``m.room.message``, ``content.name`` of ``m.room.name``,
``content.topic`` of ``m.room.topic``), bounded in length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from homeserver.events.event import Event

THREAD = "m.thread"
REPLACE = "m.replace"
REFERENCE = "m.reference"
ANNOTATION = "m.annotation"

# Longest rel_type kept (a longer one is ignored), and longest text indexed for search.
MAX_REL_TYPE = 255
MAX_SEARCH_TEXT = 16_384

SEARCH_KEYS: dict[str, tuple[str, str]] = {
    "content.body": ("m.room.message", "body"),
    "content.name": ("m.room.name", "name"),
    "content.topic": ("m.room.topic", "topic"),
}
_BY_TYPE = {event_type: (key, field) for key, (event_type, field) in SEARCH_KEYS.items()}


@dataclass(frozen=True, slots=True)
class Relation:
    rel_type: str
    parent_id: str


def relation_of(content: Any, *, is_state: bool = False) -> Relation | None:
    """The relation ``content`` (an event's content) declares, if any."""
    if is_state or not isinstance(content, dict):
        return None
    relates = content.get("m.relates_to")
    if not isinstance(relates, dict):
        return None
    rel_type = relates.get("rel_type")
    parent = relates.get("event_id")
    if not isinstance(rel_type, str) or not isinstance(parent, str):
        return None
    if not rel_type or len(rel_type) > MAX_REL_TYPE or not parent.startswith("$") or len(parent) > 255:
        return None
    # A NUL (federation lets it through in content) cannot be stored in PostgreSQL's text:
    # such a relation would make the event itself unstorable.
    if "\x00" in rel_type or "\x00" in parent:
        return None
    return Relation(rel_type, parent)


def event_relation(event: Event) -> Relation | None:
    return relation_of(event.content, is_state=event.is_state)


def searchable_of(event: Event) -> tuple[str, str] | None:
    """(key, text) of what ``/search`` indexes of ``event``, if anything."""
    found = _BY_TYPE.get(event.type)
    if found is None:
        return None
    key, field = found
    if event.type == "m.room.message" and event.is_state:
        return None
    if event.type != "m.room.message" and event.state_key != "":
        return None
    value = event.content.get(field)
    if not isinstance(value, str) or not value.strip():
        return None
    return key, value[:MAX_SEARCH_TEXT].replace("\x00", " ")
