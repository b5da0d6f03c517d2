"""Received ``m.presence`` EDUs (pure): what the door keeps, and the /sync presence filter.

An EDU's ``push`` entries are kept only about the origin's own users and rebuilt from the
fields we use, within bounds: a user ID of at most 255 bytes, ``presence`` one of the
three states, ``status_msg`` a string of at most ``MAX_STATUS_MSG_BYTES`` bytes,
``last_active_ago`` a non-negative integer, ``currently_active`` a boolean; at most
``MAX_PRESENCE_PER_EDU`` entries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from homeserver.events.identifiers import server_name_of
from homeserver.presence.state import PRESENCE_STATES

MAX_USER_ID_BYTES = 255
MAX_STATUS_MSG_BYTES = 1024
MAX_PRESENCE_PER_EDU = 1000
MAX_FILTER_ENTRIES = 1000


def status_msg_ok(value: object) -> bool:
    return isinstance(value, str) and len(value.encode("utf-8", "surrogatepass")) <= MAX_STATUS_MSG_BYTES


def _user_of(origin: str, user_id: object) -> bool:
    return (isinstance(user_id, str) and user_id.startswith("@") and ":" in user_id
            and len(user_id.encode("utf-8", "surrogatepass")) <= MAX_USER_ID_BYTES
            and server_name_of(user_id) == origin)


@dataclass(frozen=True, slots=True)
class Kept:
    content: dict[str, Any] | None  # {"push": [...]}, None when nothing is kept
    foreign: int  # entries about another server's users
    malformed: int


def presence_edu(origin: str, content: Mapping[str, Any]) -> Kept:
    push = content.get("push")
    if not isinstance(push, list):
        return Kept(None, 0, 1)
    kept: list[dict[str, Any]] = []
    foreign = malformed = 0
    for entry in push:
        if not isinstance(entry, Mapping):
            malformed += 1
            continue
        if not _user_of(origin, entry.get("user_id")):
            foreign += 1
            continue
        presence = entry.get("presence")
        status_msg = entry.get("status_msg")
        ago = entry.get("last_active_ago")
        active = entry.get("currently_active", False)
        if (presence not in PRESENCE_STATES or (status_msg is not None and not status_msg_ok(status_msg))
                or (ago is not None and (not isinstance(ago, int) or isinstance(ago, bool) or ago < 0))
                or not isinstance(active, bool) or len(kept) >= MAX_PRESENCE_PER_EDU):
            malformed += 1
            continue
        out: dict[str, Any] = {"user_id": entry["user_id"], "presence": presence, "currently_active": active}
        if status_msg is not None:
            out["status_msg"] = status_msg
        if ago is not None:
            out["last_active_ago"] = ago
        kept.append(out)
    return Kept({"push": kept} if kept else None, foreign, malformed)


@dataclass(frozen=True, slots=True)
class PresenceFilter:
    """A filter's ``presence`` part: event types and senders allowed or not, and a limit."""

    types: frozenset[str] | None = None
    not_types: frozenset[str] = frozenset()
    senders: frozenset[str] | None = None
    not_senders: frozenset[str] = frozenset()
    limit: int | None = None

    def allows(self, sender: str, event_type: str = "m.presence") -> bool:
        if event_type in self.not_types or sender in self.not_senders:
            return False
        if self.types is not None and not any(_type_matches(t, event_type) for t in self.types):
            return False
        return self.senders is None or sender in self.senders

    def apply(self, events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        out = [e for e in events if self.allows(e["sender"], e["type"])]
        return out if self.limit is None else out[: self.limit]


def _type_matches(pattern: str, event_type: str) -> bool:
    return fnmatchcase(event_type, pattern) if "*" in pattern else pattern == event_type


def _strings(value: object) -> frozenset[str] | None:
    if not isinstance(value, list) or len(value) > MAX_FILTER_ENTRIES:
        return None
    return frozenset(v for v in value if isinstance(v, str))


def presence_filter(flt: object) -> PresenceFilter:
    """The ``presence`` part of a filter (a JSON object); anything malformed in it is
    ignored (the filter's room part is checked by sync.py)."""
    part = flt.get("presence") if isinstance(flt, Mapping) else None
    if not isinstance(part, Mapping):
        return PresenceFilter()
    limit = part.get("limit")
    return PresenceFilter(
        types=_strings(part.get("types")),
        not_types=_strings(part.get("not_types")) or frozenset(),
        senders=_strings(part.get("senders")),
        not_senders=_strings(part.get("not_senders")) or frozenset(),
        limit=max(0, limit) if isinstance(limit, int) and not isinstance(limit, bool) else None,
    )
