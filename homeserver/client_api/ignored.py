"""Ignored users (``m.ignored_user_list`` account data): who a user ignores.

The spec's rules, applied for the ignoring user only: events sent by an ignored user are
left out of /sync timelines, /messages and /context (state events stay, they still make
the room's state), and invites from them are not shown in /sync.
"""

from __future__ import annotations

from homeserver.rooms.service import RoomService
from homeserver.storage.account_data import GLOBAL, AccountDataStore

IGNORED_USER_LIST = "m.ignored_user_list"
MAX_IGNORED = 10_000


async def ignored_users(store: AccountDataStore, user_id: str) -> frozenset[str]:
    """The user IDs ``user_id`` ignores (empty when unset or malformed)."""
    content = await store.get(user_id, GLOBAL, IGNORED_USER_LIST)
    if not isinstance(content, dict):
        return frozenset()
    listed = content.get("ignored_users")
    if not isinstance(listed, dict):
        return frozenset()
    return frozenset(u for u in list(listed)[:MAX_IGNORED] if isinstance(u, str) and u != user_id)


async def inviter_of(rooms: RoomService, user_id: str, room_id: str) -> str | None:
    """Who sent ``user_id``'s invite (or knock answer) to ``room_id``, when known."""
    invite = await rooms.memberships.get_invite(user_id, room_id)
    if invite is not None and invite.membership == "invite":
        return invite.sender
    _, event_id = await rooms.get_membership(user_id, room_id)
    stored = await rooms.store.get_event(event_id) if event_id is not None else None
    return stored.event.sender if stored is not None else None
