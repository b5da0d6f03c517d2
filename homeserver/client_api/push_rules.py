"""Push rules, read-only: every user has the spec's server-default rule set (client-server
"Push Notifications", Predefined Rules), with their user ID and localpart filled in.

``GET /pushrules/`` and ``GET /pushrules/global/`` give the rule set, ``GET
/pushrules/global/{kind}/{ruleId}[/enabled|/actions]`` one rule. Changing rules (PUT or
DELETE of a rule, its ``enabled`` or ``actions``) answers 403 M_FORBIDDEN: user rules are
not kept. No pushers exist, so no push notifications are sent.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from homeserver.client_api.common import Authenticator
from homeserver.errors import MatrixError, forbidden, not_found
from homeserver.http import json_response

KINDS = ("override", "content", "room", "sender", "underride")

_SOUND: dict[str, Any] = {"set_tweak": "sound", "value": "default"}
_HIGHLIGHT: dict[str, Any] = {"set_tweak": "highlight"}


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


def default_push_rules(user_id: str) -> dict[str, list[dict[str, Any]]]:
    """The spec's default ``global`` rule set for ``user_id``, in priority order per kind."""
    localpart = user_id[1:].split(":", 1)[0]
    notify_sound = ["notify", dict(_SOUND)]
    highlight_sound = ["notify", dict(_SOUND), dict(_HIGHLIGHT)]
    room_permission = {"kind": "sender_notification_permission", "key": "room"}
    override = [
        _rule(".m.rule.master", [], [], enabled=False),
        _rule(".m.rule.suppress_notices", [], [_match("content.msgtype", "m.notice")]),
        _rule(".m.rule.invite_for_me", notify_sound, [
            _match("type", "m.room.member"), _match("content.membership", "invite"), _match("state_key", user_id),
        ]),
        _rule(".m.rule.member_event", [], [_match("type", "m.room.member")]),
        _rule(".m.rule.is_user_mention", highlight_sound, [
            {"kind": "event_property_contains", "key": "content.m\\.mentions.user_ids", "value": user_id},
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
    content = [_rule(".m.rule.contains_user_name", highlight_sound, pattern=localpart)]
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


def push_rules_account_data(user_id: str) -> dict[str, Any]:
    """The ``m.push_rules`` account data event /sync gives on an initial sync."""
    return {"type": "m.push_rules", "content": {"global": default_push_rules(user_id)}}


class PushRulesAPI:
    def __init__(self, auth: Authenticator) -> None:
        self.auth = auth

    def routes(self) -> list[web.RouteDef]:
        p = "/_matrix/client/v3/pushrules"
        rule = f"{p}/{{scope}}/{{kind}}/{{rule_id}}"
        return [
            web.get(f"{p}/", self.get_all),
            web.get(p, self.get_all),
            web.get(f"{p}/{{scope}}/", self.get_scope),
            web.get(f"{p}/{{scope}}", self.get_scope),
            web.get(rule, self.get_rule),
            web.get(f"{rule}/{{attr:enabled|actions}}", self.get_rule),
            web.put(rule, self.change),
            web.delete(rule, self.change),
            web.put(f"{rule}/{{attr:enabled|actions}}", self.change),
        ]

    async def get_all(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        return json_response({"global": default_push_rules(req.user_id)})

    async def get_scope(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        _check_scope(request.match_info["scope"])
        return json_response(default_push_rules(req.user_id))

    async def get_rule(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        _check_scope(request.match_info["scope"])
        kind = _check_kind(request.match_info["kind"])
        rule_id = request.match_info["rule_id"]
        for rule in default_push_rules(req.user_id)[kind]:
            if rule["rule_id"] == rule_id:
                attr = request.match_info.get("attr")
                return json_response(rule if attr is None else {attr: rule[attr]})
        raise not_found("Push rule not found")

    async def change(self, request: web.Request) -> web.Response:
        await self.auth.requester(request)
        _check_scope(request.match_info["scope"])
        _check_kind(request.match_info["kind"])
        raise forbidden("Push rules are read-only on this server: only the default rules apply")


def _check_scope(scope: str) -> None:
    if scope != "global":
        raise MatrixError(400, "M_INVALID_PARAM", "The only push rule scope is global")


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise MatrixError(400, "M_INVALID_PARAM", f"kind must be one of {', '.join(KINDS)}")
    return kind
