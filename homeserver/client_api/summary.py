"""/sync's room ``summary``: ``m.joined_member_count``, ``m.invited_member_count`` and,
for a room with no name and no canonical alias, ``m.heroes``.

Heroes, as the spec says: up to ``MAX_HEROES`` members other than the syncing user, the
joined and invited ones, in the order their member events reached the room (stream
order); only when there are none, those who left or were banned. With lazy loading, the
heroes' member events are added to the section's state (``sync_rooms.py``). In a room
with more than ``MAX_SORTED`` candidates the order is by user ID instead (no member
events are read), which bounds the work for large unnamed rooms.
"""

from __future__ import annotations

from typing import Any

from homeserver.storage.events import EventStore

MAX_HEROES = 5
MAX_SORTED = 200


def _named(content: Any, key: str) -> bool:
    return isinstance(content, dict) and isinstance(content.get(key), str) and bool(content[key])


async def room_summary(events: EventStore, room_id: str, user_id: str) -> dict[str, Any]:
    members = await events.member_memberships(room_id)
    joined = sum(1 for _, _, m in members if m == "join")
    invited = sum(1 for _, _, m in members if m == "invite")
    summary: dict[str, Any] = {"m.joined_member_count": joined, "m.invited_member_count": invited}
    named = False
    for key, field in ((("m.room.name", ""), "name"), (("m.room.canonical_alias", ""), "alias")):
        event_id = await events.current_state_id(room_id, key)
        if event_id is not None:
            stored = await events.get_event(event_id)
            if stored is not None and _named(dict(stored.event.content), field):
                named = True
    if named:
        return summary
    present = [(u, e) for u, e, m in members if m in ("join", "invite") and u != user_id]
    gone = [(u, e) for u, e, m in members if m in ("leave", "ban") and u != user_id]
    summary["m.heroes"] = await _ordered(events, present if present else gone)
    return summary


async def _ordered(events: EventStore, members: list[tuple[str, str]]) -> list[str]:
    if len(members) > MAX_SORTED:
        return sorted(u for u, _ in members)[:MAX_HEROES]
    found = await events.get_events(e for _, e in members)
    ranked = sorted(members, key=lambda ue: (found[ue[1]].stream_ordering if ue[1] in found else 2**62, ue[0]))
    return [u for u, _ in ranked[:MAX_HEROES]]
