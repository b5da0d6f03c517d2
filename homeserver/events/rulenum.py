"""Rule numbers of the authorization rules in each room version's own list.

The auth rules are written once, numbered as in room version 10's list; ``rule_number``
renames a rule for the version at hand, so an AuthError cites the spec page of the
event's room version:

- rooms 1-5 have rule 4 for ``m.room.aliases``: rules 4 and later move down one;
- rooms 1-7 have no 4.2 (``join_authorised_via_users_server``) nor 4.3.5 (restricted
  joins), rooms 1-6 no 4.7 (knocking): the member rules after them move up;
- rooms 1-9 have no 9.1/9.2 (integer-only power levels): 9.3 and later move up two;
- room 12 inserts rule 2 (the room ID is the create event's) and 10.4 (creators are not
  in ``users``).
"""

from __future__ import annotations

from homeserver.events.errors import AuthError
from homeserver.events.event import Event
from homeserver.events.versions import RoomVersion


def _member_subrule(version: RoomVersion, parts: list[str]) -> None:
    """Rewrite ``parts`` (``["4", sub, ...]``) in place for rooms 1-7."""
    sub = int(parts[1])
    if sub == 3 and len(parts) > 2 and int(parts[2]) >= 6:
        parts[2] = str(int(parts[2]) - 1)  # join: no 4.3.5 (restricted) before room 8
    if sub >= 3:
        sub -= 1  # no 4.2 before room 8
    if sub == 7 and not version.knocking:
        sub = 6  # unknown membership: no knock rule before room 7
    parts[1] = str(sub)


def rule_number(version: RoomVersion, base: str) -> str:
    """Translate a rule number of the room v10 list into ``version``'s list."""
    parts = base.split(".")
    top = int(parts[0])
    if top == 4 and len(parts) > 1 and not version.restricted_joins:
        _member_subrule(version, parts)
    if top == 9 and len(parts) > 1 and not version.strict_integer_power_levels:
        parts[1] = str(int(parts[1]) - 2)
    if version.special_case_aliases_auth and top >= 4:
        parts[0] = str(top + 1)
    if version.room_id_is_create_hash:
        if top >= 2:
            parts[0] = str(top + 1)
        if top == 9 and len(parts) > 1 and int(parts[1]) >= 4:
            parts[1] = str(int(parts[1]) + 1)
    return ".".join(parts)


def reject(event: Event, base: str, reason: str) -> AuthError:
    """The AuthError for rule ``base`` (v10 numbering) of ``event``'s room version."""
    return AuthError(rule_number(event.room_version, base), reason)
