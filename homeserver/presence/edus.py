"""Received ``m.presence`` EDUs (pure): what the door keeps.

An EDU's ``push`` entries are kept only about the origin's own users and rebuilt from the
fields we use, within bounds: a user ID of at most 255 bytes, ``presence`` one of the
three states, ``status_msg`` a string of at most ``MAX_STATUS_MSG_BYTES`` bytes,
``last_active_ago`` a non-negative integer, ``currently_active`` a boolean; at most
``MAX_PRESENCE_PER_EDU`` entries.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from homeserver.events.identifiers import server_name_of
from homeserver.presence.state import PRESENCE_STATES

MAX_USER_ID_BYTES = 255
MAX_STATUS_MSG_BYTES = 1024
MAX_PRESENCE_PER_EDU = 1000


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
