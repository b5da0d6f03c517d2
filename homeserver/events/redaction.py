"""The redaction algorithm of each room version (``RoomVersion.redaction``: the v1 rules
for rooms 1-5, v6 for 6-7, v8 for 8, v9 for 9-10, v11 for 11-12; rooms/fragments/
v1-redactions.md, v6-, v9-, v11-redactions.md and rooms/v8.md).

Redaction decides what is covered by signatures and the reference hash, and what is
served of an event that has been redacted.
"""

from __future__ import annotations

from typing import Any

from homeserver.events.errors import EventFormatError
from homeserver.events.versions import RedactionRules, RoomVersion

_TOP_LEVEL_V1 = frozenset(
    {
        "event_id", "type", "room_id", "sender", "state_key", "content", "hashes",
        "signatures", "depth", "prev_events", "prev_state", "auth_events", "origin",
        "origin_server_ts", "membership",
    }
)
_TOP_LEVEL_V11 = frozenset(
    {
        "event_id", "type", "room_id", "sender", "state_key", "content", "hashes",
        "signatures", "depth", "prev_events", "auth_events", "origin_server_ts",
    }
)

_PL_V1 = frozenset(
    {"ban", "events", "events_default", "kick", "redact", "state_default", "users",
     "users_default"}
)
_CONTENT_V6: dict[str, frozenset[str]] = {
    "m.room.member": frozenset({"membership"}),
    "m.room.create": frozenset({"creator"}),
    "m.room.join_rules": frozenset({"join_rule"}),
    "m.room.power_levels": _PL_V1,
    "m.room.history_visibility": frozenset({"history_visibility"}),
}
# rooms 1-5: m.room.aliases keeps "aliases"
_CONTENT_V1 = {**_CONTENT_V6, "m.room.aliases": frozenset({"aliases"})}
# room 8: m.room.join_rules keeps "allow"
_CONTENT_V8 = {**_CONTENT_V6, "m.room.join_rules": frozenset({"join_rule", "allow"})}
# rooms 9, 10: m.room.member keeps "join_authorised_via_users_server"
_CONTENT_V9 = {
    **_CONTENT_V8,
    "m.room.member": frozenset({"membership", "join_authorised_via_users_server"}),
}
# rooms 11, 12: create keeps all (below), power levels keep "invite", redaction "redacts",
# member the "signed" of "third_party_invite" (below); no top-level origin/membership/prev_state
_CONTENT_V11: dict[str, frozenset[str]] = {
    "m.room.member": frozenset({"membership", "join_authorised_via_users_server"}),
    "m.room.join_rules": frozenset({"join_rule", "allow"}),
    "m.room.power_levels": _PL_V1 | {"invite"},
    "m.room.history_visibility": frozenset({"history_visibility"}),
    "m.room.redaction": frozenset({"redacts"}),
}
_CONTENT: dict[RedactionRules, dict[str, frozenset[str]]] = {
    RedactionRules.V1: _CONTENT_V1,
    RedactionRules.V6: _CONTENT_V6,
    RedactionRules.V8: _CONTENT_V8,
    RedactionRules.V9: _CONTENT_V9,
    RedactionRules.V11: _CONTENT_V11,
}


def redact(event: dict[str, Any], version: RoomVersion) -> dict[str, Any]:
    """Return ``event`` (a PDU as JSON) redacted under ``version``'s rules.

    The result is a new top-level dict and a new ``content`` dict; deeper values are shared
    with ``event`` (redaction runs for every hash and signature check, and copying whole
    events there was the largest cost of the inbound path). Callers may add, remove or
    replace top-level keys and content keys, but must not mutate anything deeper.
    EventFormatError when ``event`` is not a JSON object.
    """
    if not isinstance(event, dict):
        raise EventFormatError("a PDU must be a JSON object")
    v11 = version.redaction is RedactionRules.V11
    keep = _TOP_LEVEL_V11 if v11 else _TOP_LEVEL_V1
    out: dict[str, Any] = {k: v for k, v in event.items() if k in keep}
    content = event.get("content")
    if not isinstance(content, dict):
        out["content"] = {}
        return out
    event_type = event.get("type")
    if not isinstance(event_type, str):
        event_type = None  # no content key is kept for it
    if v11 and event_type == "m.room.create":
        out["content"] = dict(content)
        return out
    allowed = _CONTENT[version.redaction].get(event_type or "", frozenset())
    new_content = {k: v for k, v in content.items() if k in allowed}
    if v11 and event_type == "m.room.member":
        tpi = content.get("third_party_invite")
        if isinstance(tpi, dict) and "signed" in tpi:
            new_content["third_party_invite"] = {"signed": tpi["signed"]}
    out["content"] = new_content
    return out
