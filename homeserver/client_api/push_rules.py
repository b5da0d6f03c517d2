"""Push rules (client-server "Push Rules: API"): every user has the spec's server-default
rule set (push/rules.py) plus rules of their own, stored per user (storage/push.py).

``GET /pushrules/`` and ``GET /pushrules/global/`` give the merged rule set, ``GET
/pushrules/global/{kind}/{ruleId}[/enabled|/actions]`` one rule. ``PUT`` adds or replaces a
user rule (``before`` / ``after`` place it among the user's rules of its kind, else a new
rule comes first), ``DELETE`` removes one, ``PUT .../enabled`` and ``.../actions`` change
any rule. A server-default rule (ID starting with ``.``) cannot be added, replaced or
deleted, only enabled, disabled or given other actions. Each change drops the user's compiled
rules (push/rulebook.py) and stores the new set as their ``m.push_rules`` account data,
which /sync delivers.

Errors: a bad scope, kind, rule or body is 400 M_INVALID_PARAM (M_BAD_JSON for a body that
is not the right shape); an unknown rule 404 M_NOT_FOUND; an unknown ``before`` / ``after``
400 M_UNKNOWN.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from homeserver.client_api.account_data import AccountData
from homeserver.client_api.common import MAX_ID_BYTES, Authenticator
from homeserver.config import ClientConfig
from homeserver.errors import MatrixError, not_found
from homeserver.http import json_response, read_json_object
from homeserver.push.rulebook import RuleBook
from homeserver.push.rules import KINDS, UserRule, is_default
from homeserver.storage.account_data import GLOBAL
from homeserver.storage.push import RuleNotFound

MAX_USER_RULES = 200
MAX_CONDITIONS = 20
MAX_ACTIONS = 20
# Globs are matched in O(len(value) x len(pattern)) (util/glob.py), so what one user's rules
# may cost per event is bounded: per pattern, and summed over all of the user's patterns.
MAX_PATTERN_CHARS = 256
MAX_TOTAL_PATTERN_CHARS = 8192
MAX_ACTIONS_BYTES = 4096  # actions are copied into every notification row
CONDITION_KINDS = ("event_match", "event_property_is", "event_property_contains", "contains_display_name",
                   "room_member_count", "sender_notification_permission")


def _invalid(message: str) -> MatrixError:
    return MatrixError(400, "M_INVALID_PARAM", message)


def check_actions(actions: Any) -> list[Any]:
    if not isinstance(actions, list) or len(actions) > MAX_ACTIONS:
        raise _invalid(f"actions must be a list of at most {MAX_ACTIONS} actions")
    if len(json.dumps(actions)) > MAX_ACTIONS_BYTES:
        raise _invalid(f"actions may take at most {MAX_ACTIONS_BYTES} bytes")
    for a in actions:
        if a in ("notify", "dont_notify", "coalesce"):
            continue
        if isinstance(a, dict) and isinstance(a.get("set_tweak"), str) and set(a) <= {"set_tweak", "value"}:
            continue
        raise _invalid(f"unknown action: {a!r}"[:200])
    return actions


def _check_condition(cond: Any) -> dict[str, Any]:
    if not isinstance(cond, dict) or not isinstance(cond.get("kind"), str):
        raise _invalid("each condition must be an object with a kind")
    kind = cond["kind"]
    if kind in ("event_match", "event_property_is", "event_property_contains", "sender_notification_permission"):
        if not isinstance(cond.get("key"), str):
            raise _invalid(f"a {kind} condition needs a key")
    if kind == "event_match" and not isinstance(cond.get("pattern"), str):
        raise _invalid("an event_match condition needs a pattern")
    if kind == "event_match" and len(cond["pattern"]) > MAX_PATTERN_CHARS:
        raise _invalid(f"a pattern may have at most {MAX_PATTERN_CHARS} characters")
    if kind in ("event_property_is", "event_property_contains"):
        value = cond.get("value", ...)
        if value is not None and not isinstance(value, (str, int, bool)):
            raise _invalid(f"a {kind} condition needs a non-compound value")
    if kind == "room_member_count" and not isinstance(cond.get("is"), str):
        raise _invalid("a room_member_count condition needs is")
    return cond  # unknown kinds are kept: the rule then never matches (spec)


def parse_rule(kind: str, rule_id: str, body: dict[str, Any]) -> UserRule:
    """A user rule from a PUT body (M_INVALID_PARAM when malformed)."""
    actions = check_actions(body.get("actions"))
    if kind == "room" and not rule_id.startswith("!"):
        raise _invalid("a room rule's ID is the room ID")
    if kind == "sender" and not rule_id.startswith("@"):
        raise _invalid("a sender rule's ID is the sender's user ID")
    if kind == "content":
        pattern = body.get("pattern")
        if not isinstance(pattern, str) or not pattern:
            raise _invalid("a content rule needs a pattern")
        if len(pattern) > MAX_PATTERN_CHARS:
            raise _invalid(f"a pattern may have at most {MAX_PATTERN_CHARS} characters")
        return UserRule(kind, rule_id, actions, pattern=pattern)
    if kind in ("override", "underride"):
        conditions = body.get("conditions", [])
        if not isinstance(conditions, list) or len(conditions) > MAX_CONDITIONS:
            raise _invalid(f"conditions must be a list of at most {MAX_CONDITIONS} conditions")
        return UserRule(kind, rule_id, actions, [_check_condition(c) for c in conditions])
    return UserRule(kind, rule_id, actions)


class PushRulesAPI:
    def __init__(self, config: ClientConfig, auth: Authenticator, rulebook: RuleBook,
                 account_data: AccountData) -> None:
        self.config = config
        self.auth = auth
        self.rulebook = rulebook
        self.store = rulebook.store
        self.account_data = account_data

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
            web.put(rule, self.put_rule),
            web.delete(rule, self.delete_rule),
            web.put(f"{rule}/{{attr:enabled|actions}}", self.put_attr),
        ]

    async def get_all(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        return json_response({"global": await self.rulebook.ruleset(req.user_id)})

    async def get_scope(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        _check_scope(request.match_info["scope"])
        return json_response(await self.rulebook.ruleset(req.user_id))

    async def get_rule(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        kind, rule_id = _target(request)
        for rule in (await self.rulebook.ruleset(req.user_id))[kind]:
            if rule["rule_id"] == rule_id:
                attr = request.match_info.get("attr")
                return json_response(rule if attr is None else {attr: rule[attr]})
        raise not_found("Push rule not found")

    async def put_rule(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        kind, rule_id = _target(request)
        if rule_id.startswith("."):
            raise _invalid("Rule IDs starting with '.' are reserved for server-default rules")
        if len(rule_id.encode()) > MAX_ID_BYTES:
            raise _invalid("Rule ID too long")
        body = await read_json_object(request, self.config.max_body_bytes)
        rule = parse_rule(kind, rule_id, body)
        before, after = request.query.get("before"), request.query.get("after")
        if before is not None and after is not None:
            raise _invalid("Give before or after, not both")
        current = await self.rulebook.ruleset(req.user_id)
        exists = any(r["rule_id"] == rule_id for r in current[kind])
        if not exists and sum(1 for k in KINDS for r in current[k] if not r["default"]) >= MAX_USER_RULES:
            raise _invalid(f"At most {MAX_USER_RULES} push rules per user")
        others = [r for k in KINDS for r in current[k] if not r["default"] and (k, r["rule_id"]) != (kind, rule_id)]
        if pattern_chars(others) + pattern_chars([{"pattern": rule.pattern, "conditions": rule.conditions}]) \
                > MAX_TOTAL_PATTERN_CHARS:
            raise _invalid(f"A user's push rule patterns may total at most {MAX_TOTAL_PATTERN_CHARS} characters")
        try:
            await self.store.put_rule(req.user_id, rule, before, after)
        except RuleNotFound:
            raise MatrixError(400, "M_UNKNOWN", "The before/after rule does not exist") from None
        await self._changed(req.user_id)
        return json_response({})

    async def delete_rule(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        kind, rule_id = _target(request)
        if is_default(kind, rule_id):
            raise _invalid("Server-default rules cannot be deleted")
        if not await self.store.delete_rule(req.user_id, kind, rule_id):
            raise not_found("Push rule not found")
        await self._changed(req.user_id)
        return json_response({})

    async def put_attr(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        kind, rule_id = _target(request)
        attr = request.match_info["attr"]
        body = await read_json_object(request, self.config.max_body_bytes)
        enabled: bool | None = None
        actions: list[Any] | None = None
        if attr == "enabled":
            enabled = body.get("enabled")
            if not isinstance(enabled, bool):
                raise _invalid("enabled must be a boolean")
        else:
            actions = check_actions(body.get("actions"))
        if is_default(kind, rule_id):
            await self.store.override_default(req.user_id, rule_id, enabled=enabled, actions=actions)
        elif not await self.store.update_rule(req.user_id, kind, rule_id, enabled=enabled, actions=actions):
            raise not_found("Push rule not found")
        await self._changed(req.user_id)
        return json_response({})

    async def _changed(self, user_id: str) -> None:
        self.rulebook.invalidate(user_id)
        rules = await self.rulebook.ruleset(user_id)
        await self.account_data.set(user_id, GLOBAL, "m.push_rules", {"global": rules})


def pattern_chars(rules: list[dict[str, Any]]) -> int:
    """The glob characters of rules (content patterns and event_match conditions)."""
    total = 0
    for r in rules:
        pattern = r.get("pattern")
        total += len(pattern) if isinstance(pattern, str) else 0
        for c in r.get("conditions") or ():
            if isinstance(c, dict) and c.get("kind") == "event_match" and isinstance(c.get("pattern"), str):
                total += len(c["pattern"])
    return total


def _check_scope(scope: str) -> None:
    if scope != "global":
        raise _invalid("The only push rule scope is global")


def _target(request: web.Request) -> tuple[str, str]:
    _check_scope(request.match_info["scope"])
    kind = request.match_info["kind"]
    if kind not in KINDS:
        raise _invalid(f"kind must be one of {', '.join(KINDS)}")
    return kind, request.match_info["rule_id"]
