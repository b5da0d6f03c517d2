"""Push rule sets: the spec's server-default rules (client-server "Push Notifications",
Predefined Rules) and a user's own rules merged into them. Pure: dicts in, dicts out.

A user's stored state is a list of ``UserRule`` (their own rules, in priority order per
kind) and ``DefaultOverride`` (``enabled`` / ``actions`` changed on a server-default rule).
``ruleset`` merges them into the ``global`` rule set in evaluation order: within each kind
the user's rules come before the server-default ones (spec: server-default rules have the
lowest priority of their kind), except ``.m.rule.master`` which stays first of override.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from homeserver.storage.push import DefaultOverride, UserRule

__all__ = ["DefaultOverride", "UserRule"]  # stored per user by storage/push.py

KINDS = ("override", "content", "room", "sender", "underride")

# Placeholders in the default rules, filled in per user (rules are compiled once with them).
USER_ID = "\x00user_id"
LOCALPART = "\x00localpart"

_SOUND: dict[str, Any] = {"set_tweak": "sound", "value": "default"}
_HIGHLIGHT: dict[str, Any] = {"set_tweak": "highlight"}

# The deprecated mention rules: they do not apply to an event whose content has m.mentions.
LEGACY_MENTION_RULES = frozenset({".m.rule.contains_display_name", ".m.rule.roomnotif", ".m.rule.contains_user_name"})


def _match(key: str, pattern: str) -> dict[str, Any]:
    return {"kind": "event_match", "key": key, "pattern": pattern}


def _rule(rule_id: str, actions: list[Any], conditions: list[dict[str, Any]] | None = None,
          *, enabled: bool = True, pattern: str | None = None) -> dict[str, Any]:
    rule: dict[str, Any] = {"rule_id": rule_id, "default": True, "enabled": enabled, "actions": actions}
    if conditions is not None:
        rule["conditions"] = conditions
    if pattern is not None:
        rule["pattern"] = pattern
    return rule


def _template() -> dict[str, list[dict[str, Any]]]:
    """The server-default rules in the spec's order, with ``USER_ID`` / ``LOCALPART`` placeholders."""
    notify_sound = ["notify", dict(_SOUND)]
    highlight_sound = ["notify", dict(_SOUND), dict(_HIGHLIGHT)]
    room_permission = {"kind": "sender_notification_permission", "key": "room"}
    override = [
        _rule(".m.rule.master", [], [], enabled=False),
        _rule(".m.rule.suppress_notices", [], [_match("content.msgtype", "m.notice")]),
        _rule(".m.rule.invite_for_me", notify_sound, [
            _match("type", "m.room.member"), _match("content.membership", "invite"), _match("state_key", USER_ID),
        ]),
        _rule(".m.rule.member_event", [], [_match("type", "m.room.member")]),
        _rule(".m.rule.is_user_mention", highlight_sound, [
            {"kind": "event_property_contains", "key": "content.m\\.mentions.user_ids", "value": USER_ID},
        ]),
        _rule(".m.rule.contains_display_name", highlight_sound, [{"kind": "contains_display_name"}]),
        _rule(".m.rule.is_room_mention", ["notify", dict(_HIGHLIGHT)], [
            {"kind": "event_property_is", "key": "content.m\\.mentions.room", "value": True}, dict(room_permission),
        ]),
        _rule(".m.rule.roomnotif", ["notify", dict(_HIGHLIGHT)], [
            _match("content.body", "@room"), dict(room_permission),
        ]),
        _rule(".m.rule.tombstone", ["notify", dict(_HIGHLIGHT)], [
            _match("type", "m.room.tombstone"), _match("state_key", ""),
        ]),
        _rule(".m.rule.reaction", [], [_match("type", "m.reaction")]),
        _rule(".m.rule.room.server_acl", [], [_match("type", "m.room.server_acl"), _match("state_key", "")]),
        _rule(".m.rule.suppress_edits", [], [
            {"kind": "event_property_is", "key": "content.m\\.relates_to.rel_type", "value": "m.replace"},
        ]),
    ]
    content = [_rule(".m.rule.contains_user_name", highlight_sound, pattern=LOCALPART)]
    one_to_one = {"kind": "room_member_count", "is": "2"}
    underride = [
        _rule(".m.rule.call", ["notify", {"set_tweak": "sound", "value": "ring"}], [_match("type", "m.call.invite")]),
        _rule(".m.rule.encrypted_room_one_to_one", notify_sound, [
            dict(one_to_one), _match("type", "m.room.encrypted"),
        ]),
        _rule(".m.rule.room_one_to_one", notify_sound, [dict(one_to_one), _match("type", "m.room.message")]),
        _rule(".m.rule.message", ["notify"], [_match("type", "m.room.message")]),
        _rule(".m.rule.encrypted", ["notify"], [_match("type", "m.room.encrypted")]),
    ]
    return {"override": override, "content": content, "room": [], "sender": [], "underride": underride}


DEFAULT_TEMPLATE = _template()
DEFAULT_IDS: dict[str, frozenset[str]] = {k: frozenset(r["rule_id"] for r in v) for k, v in DEFAULT_TEMPLATE.items()}


def fill(value: Any, user_id: str) -> Any:
    """``value`` with the placeholders replaced by ``user_id`` and its localpart."""
    if value == USER_ID:
        return user_id
    if value == LOCALPART:
        return user_id[1:].split(":", 1)[0]
    if isinstance(value, dict):
        return {k: fill(v, user_id) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, user_id) for v in value]
    return value


def default_push_rules(user_id: str) -> dict[str, list[dict[str, Any]]]:
    """The spec's default ``global`` rule set for ``user_id``, in priority order per kind."""
    filled: dict[str, list[dict[str, Any]]] = fill(DEFAULT_TEMPLATE, user_id)
    return filled


def is_default(kind: str, rule_id: str) -> bool:
    return rule_id in DEFAULT_IDS.get(kind, frozenset())


def user_rule_json(rule: UserRule) -> dict[str, Any]:
    out: dict[str, Any] = {"rule_id": rule.rule_id, "default": False, "enabled": rule.enabled,
                           "actions": list(rule.actions)}
    if rule.kind in ("override", "underride"):
        out["conditions"] = list(rule.conditions or [])
    elif rule.kind == "content":
        out["pattern"] = rule.pattern or ""
    return out


def ruleset(
    template: Mapping[str, list[dict[str, Any]]], user_rules: Iterable[UserRule],
    overrides: Mapping[str, DefaultOverride],
) -> dict[str, list[dict[str, Any]]]:
    """The merged ``global`` rule set in evaluation order (see the module docstring).
    ``template`` is ``DEFAULT_TEMPLATE`` (placeholders kept) or ``default_push_rules(user)``."""
    own: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}
    for rule in user_rules:
        own[rule.kind].append(user_rule_json(rule))
    out: dict[str, list[dict[str, Any]]] = {}
    for kind in KINDS:
        defaults = []
        for d in template[kind]:
            o = overrides.get(d["rule_id"])
            if o is not None:
                d = dict(d)
                if o.enabled is not None:
                    d["enabled"] = o.enabled
                if o.actions is not None:
                    d["actions"] = list(o.actions)
            defaults.append(d)
        if kind == "override" and defaults and defaults[0]["rule_id"] == ".m.rule.master":
            out[kind] = [defaults[0], *own[kind], *defaults[1:]]
        else:
            out[kind] = [*own[kind], *defaults]
    return out


def strip_legacy_actions(actions: Iterable[Any]) -> list[Any]:
    """Actions with the obsolete ``dont_notify`` and ``coalesce`` removed (the spec: a
    homeserver MUST ignore them, so ``["dont_notify"]`` is ``[]``)."""
    return [a for a in actions if a not in ("dont_notify", "coalesce")]
