"""Push rule evaluation (client-server "Push Rules"): which of a room's members an event
notifies, and how. Pure: no I/O; the caller gives the event, the room's member count, the
sender's power level and the room's ``notifications`` power levels.

Rule sets are compiled once (``CompiledRules``) and evaluated for a whole group of users
at once: a condition that does not depend on the user (``type``, ``content.msgtype``,
member count, the sender's permission) is decided once per event, and those that do
(``state_key`` is the user, the user is in ``m.mentions``, the body holds their display name or
localpart) are answered for the group by look-ups, not one test per user. Every user on the
server-default rules shares one compiled set (``DEFAULT_RULES``), whose conditions carry the
``rules.USER_ID`` / ``rules.LOCALPART`` placeholders; a user with rules of their own has a
set compiled for them (values filled in), evaluated the same way as a group of one.

Semantics (the spec's): rules in order override, content, room, sender, underride; the first
enabled rule whose conditions all hold decides; a rule with an unknown condition kind never
holds. ``event_match`` globs (``*``, ``?``) case-insensitively over the whole string value,
except ``content.body``, where the pattern may match at word boundaries anywhere. Keys are
dotted paths, ``\\.`` escaping a dot and ``\\\\`` a backslash. ``event_property_is`` /
``_contains`` compare non-compound values by type and value (``true`` is not ``1``). The
deprecated mention rules (``rules.LEGACY_MENTION_RULES``) do not apply to an event with
``content["m.mentions"]``. ``dont_notify`` and ``coalesce`` are ignored.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from homeserver.push.rules import (
    DEFAULT_TEMPLATE,
    KINDS,
    LEGACY_MENTION_RULES,
    LOCALPART,
    USER_ID,
    strip_legacy_actions,
)
from homeserver.util.glob import compiled_glob

_MISSING = object()
_WORD = re.compile(r"\w+")
_MEMBER_COUNT = re.compile(r"^(==|<=|>=|<|>)?([0-9]+)$")


@lru_cache(maxsize=65536)
def _tokens(phrase: str) -> tuple[bool, tuple[str, ...]]:
    """Whether ``phrase`` is one word, and its lower-cased words."""
    return _WORD.fullmatch(phrase) is not None, tuple(_WORD.findall(phrase.lower()))


class Member:
    """A user the event may notify, with what the mention rules look for precomputed."""

    __slots__ = ("display_name", "localpart", "localpart_word", "name_tokens", "user_id")

    def __init__(self, user_id: str, display_name: str | None = None) -> None:
        self.user_id = user_id
        self.display_name = display_name
        self.localpart = user_id[1:].split(":", 1)[0]
        single, tokens = _tokens(self.localpart)
        self.localpart_word = tokens[0] if single else None  # lower-cased, when one word
        self.name_tokens = _tokens(display_name) if display_name else None

    def __repr__(self) -> str:
        return f"Member({self.user_id!r}, {self.display_name!r})"


@dataclass(frozen=True, slots=True)
class Decision:
    """What a matched rule asks for: a notification (always, here), its highlight and tweaks."""

    rule_id: str
    actions: tuple[Any, ...]
    highlight: bool
    tweaks: Mapping[str, Any]


def split_key(key: str) -> tuple[str, ...]:
    """A dotted key's path: ``content.m\\.mentions.room`` is ``("content", "m.mentions", "room")``."""
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(key):
        c = key[i]
        if c == "\\" and i + 1 < len(key) and key[i + 1] in ".\\":
            current.append(key[i + 1])
            i += 2
            continue
        if c == ".":
            parts.append("".join(current))
            current = []
        else:
            current.append(c)
        i += 1
    parts.append("".join(current))
    return tuple(parts)


class EventContext:
    """One event as the conditions see it, with what they compute memoised."""

    def __init__(
        self, event: Mapping[str, Any], member_count: int, sender_power: int,
        notification_levels: Mapping[str, Any] | None = None,
    ) -> None:
        self.event = event
        self.member_count = member_count
        self.sender_power = sender_power
        self.notification_levels = notification_levels or {}
        content = event.get("content")
        self.content: Mapping[str, Any] = content if isinstance(content, dict) else {}
        self.has_mentions = "m.mentions" in self.content
        body = self.content.get("body")
        self.body: str | None = body if isinstance(body, str) else None
        self._values: dict[tuple[str, ...], Any] = {}
        self._words: set[str] | None = None
        self._matches: dict[tuple[tuple[str, ...], str], bool] = {}

    def value(self, path: tuple[str, ...]) -> Any:
        try:
            return self._values[path]
        except KeyError:
            pass
        v: Any = self.event
        for part in path:
            if not isinstance(v, dict) or part not in v:
                v = _MISSING
                break
            v = v[part]
        self._values[path] = v
        return v

    @property
    def words(self) -> set[str]:
        if self._words is None:
            self._words = set(_WORD.findall(self.body.lower())) if self.body is not None else set()
        return self._words

    def glob(self, path: tuple[str, ...], pattern: str) -> bool:
        key = (path, pattern)
        found = self._matches.get(key)
        if found is None:
            found = self._glob(path, pattern)
            self._matches[key] = found
        return found

    def _glob(self, path: tuple[str, ...], pattern: str) -> bool:
        v = self.value(path)
        if not isinstance(v, str):
            return False
        if path == ("content", "body"):
            if _WORD.fullmatch(pattern):
                return pattern.lower() in self.words
            return compiled_glob(pattern).search_words(v)
        return compiled_glob(pattern).fullmatch(v)

    def contains_words(self, phrase: str) -> bool:
        """Whether the body holds ``phrase`` at word boundaries, case-insensitively."""
        if self.body is None or not phrase:
            return False
        single, tokens = _tokens(phrase)
        words = self.words
        if single:
            return tokens[0] in words
        # Each word of the phrase is a whole word of the body when the phrase matches: a
        # set look-up rules most users out before any regex runs.
        if not all(t in words for t in tokens):
            return False
        return _phrase_regex(phrase).search(self.body) is not None


@lru_cache(maxsize=4096)
def _phrase_regex(phrase: str) -> re.Pattern[str]:
    return re.compile(rf"(?<!\w){re.escape(phrase)}(?!\w)", re.IGNORECASE)


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


# ---------------------------------------------------------------------- conditions

class Condition:
    """A compiled condition. ``dependent`` ones answer for a group (``users``); the others
    once per event (``holds``)."""

    dependent = False

    def holds(self, ctx: EventContext) -> bool:
        raise NotImplementedError

    def users(self, ctx: EventContext, members: Mapping[str, Member]) -> set[str]:
        return set(members) if self.holds(ctx) else set()


class _Never(Condition):
    def holds(self, ctx: EventContext) -> bool:
        return False


@dataclass(slots=True)
class _EventMatch(Condition):
    path: tuple[str, ...]
    pattern: str

    def holds(self, ctx: EventContext) -> bool:
        return ctx.glob(self.path, self.pattern)


@dataclass(slots=True)
class _EventMatchUser(Condition):
    """``event_match`` whose pattern is the user's ID or localpart (placeholders)."""

    path: tuple[str, ...]
    localpart: bool
    dependent = True

    def users(self, ctx: EventContext, members: Mapping[str, Member]) -> set[str]:
        v = ctx.value(self.path)
        if not isinstance(v, str):
            return set()
        if self.path == ("content", "body"):
            if self.localpart:
                words = ctx.words
                return {u for u, m in members.items() if (m.localpart_word in words if m.localpart_word is not None
                                                          else ctx.contains_words(m.localpart))}
            return {u for u in members if ctx.contains_words(u)}
        v = v.lower()
        return {u for u, m in members.items() if (m.localpart if self.localpart else u).lower() == v}


@dataclass(slots=True)
class _PropertyIs(Condition):
    path: tuple[str, ...]
    value: Any

    def holds(self, ctx: EventContext) -> bool:
        return _same(ctx.value(self.path), self.value)


@dataclass(slots=True)
class _PropertyContains(Condition):
    path: tuple[str, ...]
    value: Any

    def holds(self, ctx: EventContext) -> bool:
        v = ctx.value(self.path)
        return isinstance(v, list) and any(_same(x, self.value) for x in v)


@dataclass(slots=True)
class _PropertyUser(Condition):
    """``event_property_is`` / ``_contains`` whose value is the user's ID (placeholder)."""

    path: tuple[str, ...]
    contains: bool
    dependent = True

    def users(self, ctx: EventContext, members: Mapping[str, Member]) -> set[str]:
        v = ctx.value(self.path)
        if self.contains:
            return {x for x in v if isinstance(x, str) and x in members} if isinstance(v, list) else set()
        return {v} if isinstance(v, str) and v in members else set()


class _DisplayName(Condition):
    dependent = True

    def users(self, ctx: EventContext, members: Mapping[str, Member]) -> set[str]:
        if ctx.body is None:
            return set()
        words = ctx.words
        out = set()
        for u, m in members.items():
            tokens = m.name_tokens
            if tokens is None or not tokens[1] or tokens[1][0] not in words:
                continue
            if tokens[0] or ctx.contains_words(m.display_name or ""):
                out.add(u)
        return out


@dataclass(slots=True)
class _MemberCount(Condition):
    op: str
    number: int

    def holds(self, ctx: EventContext) -> bool:
        n, op = ctx.member_count, self.op
        return (n == self.number if op == "==" else n < self.number if op == "<" else n > self.number if op == ">"
                else n <= self.number if op == "<=" else n >= self.number)


@dataclass(slots=True)
class _SenderPermission(Condition):
    key: str

    def holds(self, ctx: EventContext) -> bool:
        needed = ctx.notification_levels.get(self.key, 50)
        if isinstance(needed, bool) or not isinstance(needed, int):
            needed = 50
        return ctx.sender_power >= needed


def _non_compound(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, bool))


def compile_condition(cond: Any) -> Condition:
    """A condition dict compiled; one the server does not know (or malformed) never holds."""
    if not isinstance(cond, dict):
        return _Never()
    kind = cond.get("kind")
    key = cond.get("key")
    if kind == "event_match":
        pattern = cond.get("pattern")
        if not isinstance(key, str) or not isinstance(pattern, str):
            return _Never()
        if pattern in (USER_ID, LOCALPART):
            return _EventMatchUser(split_key(key), pattern == LOCALPART)
        return _EventMatch(split_key(key), pattern)
    if kind in ("event_property_is", "event_property_contains"):
        if not isinstance(key, str) or "value" not in cond or not _non_compound(cond["value"]):
            return _Never()
        if cond["value"] == USER_ID:
            return _PropertyUser(split_key(key), kind == "event_property_contains")
        if kind == "event_property_is":
            return _PropertyIs(split_key(key), cond["value"])
        return _PropertyContains(split_key(key), cond["value"])
    if kind == "contains_display_name":
        return _DisplayName()
    if kind == "room_member_count":
        m = _MEMBER_COUNT.match(cond.get("is", "")) if isinstance(cond.get("is"), str) else None
        return _MemberCount(m.group(1) or "==", int(m.group(2))) if m else _Never()
    if kind == "sender_notification_permission":
        return _SenderPermission(key) if isinstance(key, str) else _Never()
    return _Never()


# ---------------------------------------------------------------------- rules

def decision(rule_id: str, actions: Iterable[Any]) -> Decision | None:
    """The decision of a matched rule's actions: None when they do not notify."""
    acts = strip_legacy_actions(actions)
    if "notify" not in acts:
        return None
    tweaks: dict[str, Any] = {}
    for a in acts:
        if isinstance(a, dict) and isinstance(a.get("set_tweak"), str):
            name = a["set_tweak"]
            tweaks[name] = a.get("value", True) if name == "highlight" else a.get("value")
    return Decision(rule_id, tuple(acts), tweaks.get("highlight") is True, tweaks)


@dataclass(slots=True)
class _Rule:
    rule_id: str
    independent: list[Condition]
    dependent: list[Condition]
    decision: Decision | None
    legacy: bool


@dataclass(slots=True)
class CompiledRules:
    """A rule set (``{kind: [rule, ...]}``) compiled for evaluation; disabled rules dropped."""

    rules: list[_Rule] = field(default_factory=list)

    @classmethod
    def compile(cls, ruleset: Mapping[str, Sequence[Mapping[str, Any]]]) -> CompiledRules:
        out = cls()
        for kind in KINDS:
            for rule in ruleset.get(kind, ()):
                if not rule.get("enabled", True):
                    continue
                rule_id = str(rule.get("rule_id", ""))
                if kind in ("override", "underride"):
                    conds = [compile_condition(c) for c in rule.get("conditions") or []]
                elif kind == "content":
                    pattern = rule.get("pattern")
                    conds = [compile_condition({"kind": "event_match", "key": "content.body", "pattern": pattern})]
                elif kind == "room":
                    conds = [compile_condition({"kind": "event_match", "key": "room_id", "pattern": rule_id})]
                else:  # sender
                    conds = [compile_condition({"kind": "event_match", "key": "sender", "pattern": rule_id})]
                out.rules.append(_Rule(
                    rule_id, [c for c in conds if not c.dependent], [c for c in conds if c.dependent],
                    decision(rule_id, rule.get("actions") or []), rule_id in LEGACY_MENTION_RULES,
                ))
        return out

    def evaluate(self, ctx: EventContext, members: Iterable[Member]) -> dict[str, Decision]:
        """The notifying decision for each of ``members`` the event notifies."""
        remaining = {m.user_id: m for m in members}
        out: dict[str, Decision] = {}
        for rule in self.rules:
            if not remaining:
                break
            if rule.legacy and ctx.has_mentions:
                continue
            if not all(c.holds(ctx) for c in rule.independent):
                continue
            if rule.dependent:
                matched = rule.dependent[0].users(ctx, remaining)
                for c in rule.dependent[1:]:
                    if not matched:
                        break
                    matched &= c.users(ctx, {u: remaining[u] for u in matched})
            else:
                matched = set(remaining)
            for user in matched:
                del remaining[user]
                if rule.decision is not None:
                    out[user] = rule.decision
        return out


DEFAULT_RULES = CompiledRules.compile(DEFAULT_TEMPLATE)
