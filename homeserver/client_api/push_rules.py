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
from homeserver.push.rules import default_push_rules

KINDS = ("override", "content", "room", "sender", "underride")


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
