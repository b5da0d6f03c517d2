"""Push rule evaluation against the spec's rules and examples (client-server "Push Rules")."""

from __future__ import annotations

from typing import Any

import pytest

from homeserver.push.evaluate import DEFAULT_RULES, CompiledRules, EventContext, Member, compile_condition
from homeserver.push.rules import DefaultOverride, UserRule, default_push_rules, ruleset
from homeserver.util.dotted import split_path

ALICE = Member("@alice:a.test", "Alice Liddell")
BOB = Member("@bob:a.test", "Bob")
CAROL = Member("@carol:b.test", None)
MEMBERS = [ALICE, BOB, CAROL]


def msg(body: str, **content: Any) -> dict[str, Any]:
    return {"type": "m.room.message", "sender": "@dan:b.test", "room_id": "!r:a.test",
            "content": {"msgtype": "m.text", "body": body, **content}}


def ctx(event: dict[str, Any], members: int = 5, power: int = 0, levels: dict[str, Any] | None = None) -> EventContext:
    return EventContext(event, members, power, levels)


def rule_ids(event: dict[str, Any], **kw: Any) -> dict[str, str]:
    return {u: d.rule_id for u, d in DEFAULT_RULES.evaluate(ctx(event, **kw), MEMBERS).items()}


def test_split_path_escapes() -> None:
    assert split_path("content.m\\.mentions.user_ids") == ("content", "m.mentions", "user_ids")
    assert split_path("a\\\\.b") == ("a\\", "b")
    assert split_path("content.body") == ("content", "body")
    assert split_path("a\\b") == ("a\\b",)


def test_plain_message_notifies_everyone_without_highlight() -> None:
    out = DEFAULT_RULES.evaluate(ctx(msg("hello")), MEMBERS)
    assert {u: d.rule_id for u, d in out.items()} == {m.user_id: ".m.rule.message" for m in MEMBERS}
    assert not any(d.highlight for d in out.values())


def test_one_to_one_room_has_sound() -> None:
    out = DEFAULT_RULES.evaluate(ctx(msg("hi"), members=2), [ALICE])
    assert out[ALICE.user_id].rule_id == ".m.rule.room_one_to_one"
    assert out[ALICE.user_id].tweaks == {"sound": "default"}


def test_user_mention_highlights_only_the_mentioned() -> None:
    out = DEFAULT_RULES.evaluate(ctx(msg("hey", **{"m.mentions": {"user_ids": [BOB.user_id]}})), MEMBERS)
    assert out[BOB.user_id].rule_id == ".m.rule.is_user_mention" and out[BOB.user_id].highlight
    assert not out[ALICE.user_id].highlight and out[ALICE.user_id].rule_id == ".m.rule.message"


def test_display_name_and_localpart_at_word_boundaries() -> None:
    assert rule_ids(msg("ask alice liddell please"))[ALICE.user_id] == ".m.rule.contains_display_name"
    assert rule_ids(msg("BOB?"))[BOB.user_id] == ".m.rule.contains_display_name"
    assert rule_ids(msg("bobby tables"))[BOB.user_id] == ".m.rule.message"
    assert rule_ids(msg("ping carol"))[CAROL.user_id] == ".m.rule.contains_user_name"
    assert rule_ids(msg("ping carolina"))[CAROL.user_id] == ".m.rule.message"


def test_legacy_mention_rules_do_not_apply_with_m_mentions() -> None:
    assert rule_ids(msg("bob", **{"m.mentions": {}}))[BOB.user_id] == ".m.rule.message"
    assert rule_ids(msg("@room", **{"m.mentions": {}}), power=100)[ALICE.user_id] == ".m.rule.message"


def test_room_mention_needs_the_senders_permission() -> None:
    event = msg("all", **{"m.mentions": {"room": True}})
    assert rule_ids(event, power=50)[ALICE.user_id] == ".m.rule.is_room_mention"
    assert rule_ids(event, power=0)[ALICE.user_id] == ".m.rule.message"
    assert rule_ids(event, power=10, levels={"room": 10})[ALICE.user_id] == ".m.rule.is_room_mention"
    assert rule_ids(msg("@room now"), power=50)[ALICE.user_id] == ".m.rule.roomnotif"


def test_suppressed_events_do_not_notify() -> None:
    assert rule_ids(msg("beep", msgtype="m.notice")) == {}
    assert rule_ids({"type": "m.reaction", "sender": "@x:b", "content": {}}) == {}
    assert rule_ids(msg("* fix", **{"m.relates_to": {"rel_type": "m.replace", "event_id": "$e"}})) == {}
    acl = {"type": "m.room.server_acl", "state_key": "", "sender": "@x:b", "content": {}}
    assert rule_ids(acl) == {}
    member = {"type": "m.room.member", "state_key": "@x:b", "sender": "@x:b", "content": {"membership": "join"}}
    assert rule_ids(member) == {}


def test_invite_for_me() -> None:
    invite = {"type": "m.room.member", "state_key": BOB.user_id, "sender": "@x:b",
              "content": {"membership": "invite"}}
    assert rule_ids(invite) == {BOB.user_id: ".m.rule.invite_for_me"}


def test_tombstone_and_call_and_encrypted() -> None:
    tomb = {"type": "m.room.tombstone", "state_key": "", "sender": "@x:b", "content": {"body": "moved"}}
    out = DEFAULT_RULES.evaluate(ctx(tomb), [ALICE])
    assert out[ALICE.user_id].highlight
    call = {"type": "m.call.invite", "sender": "@x:b", "content": {}}
    assert DEFAULT_RULES.evaluate(ctx(call), [ALICE])[ALICE.user_id].tweaks == {"sound": "ring"}
    enc = {"type": "m.room.encrypted", "sender": "@x:b", "content": {}}
    assert rule_ids(enc, members=2)[ALICE.user_id] == ".m.rule.encrypted_room_one_to_one"
    assert rule_ids(enc)[ALICE.user_id] == ".m.rule.encrypted"


def test_event_match_globs() -> None:
    c = ctx({"type": "m.room.message", "content": {"body": "the cake is a lie", "msgtype": "m.text"}})
    assert compile_condition({"kind": "event_match", "key": "content.body", "pattern": "cake*lie"}).holds(c)
    assert compile_condition({"kind": "event_match", "key": "content.body", "pattern": "ca?e"}).holds(c)
    assert not compile_condition({"kind": "event_match", "key": "content.body", "pattern": "ake"}).holds(c)
    assert compile_condition({"kind": "event_match", "key": "type", "pattern": "m.room.*"}).holds(c)
    assert compile_condition({"kind": "event_match", "key": "type", "pattern": "M.ROOM.MESSAGE"}).holds(c)
    assert not compile_condition({"kind": "event_match", "key": "type", "pattern": "m.room"}).holds(c)
    # Only string values match.
    c2 = ctx({"type": "x", "content": {"n": 1}})
    assert not compile_condition({"kind": "event_match", "key": "content.n", "pattern": "*"}).holds(c2)


def test_event_property_is_and_contains_compare_types() -> None:
    event = {"type": "x", "content": {"flag": True, "one": 1, "none": None, "list": [1, "a", True],
                                      "dotted.key": "v"}}
    c = ctx(event)

    def holds(kind: str, key: str, value: Any) -> bool:
        return compile_condition({"kind": kind, "key": key, "value": value}).holds(c)

    assert holds("event_property_is", "content.flag", True)
    assert not holds("event_property_is", "content.one", True)
    assert holds("event_property_is", "content.one", 1)
    assert holds("event_property_is", "content.none", None)
    assert not holds("event_property_is", "content.absent", None)
    assert holds("event_property_is", "content.dotted\\.key", "v")
    assert holds("event_property_contains", "content.list", "a")
    assert holds("event_property_contains", "content.list", True)
    assert not holds("event_property_contains", "content.list", 2)
    assert not holds("event_property_contains", "content.flag", True)
    assert not compile_condition({"kind": "event_property_is", "key": "content.list", "value": [1]}).holds(c)


@pytest.mark.parametrize(("spec", "count", "expected"), [
    ("2", 2, True), ("==2", 3, False), ("<3", 2, True), ("<3", 3, False), (">3", 4, True),
    ("<=3", 3, True), (">=3", 2, False), ("x3", 3, False), ("", 3, False),
])
def test_room_member_count(spec: str, count: int, expected: bool) -> None:
    assert compile_condition({"kind": "room_member_count", "is": spec}).holds(ctx({}, members=count)) is expected


def test_unknown_condition_never_matches() -> None:
    rules = CompiledRules.compile({"override": [
        {"rule_id": "x", "enabled": True, "actions": ["notify"], "conditions": [{"kind": "org.example.unknown"}]},
    ]})
    assert rules.evaluate(ctx(msg("hi")), [ALICE]) == {}


def test_master_rule_silences_everything() -> None:
    rs = ruleset(default_push_rules(ALICE.user_id), [], {".m.rule.master": DefaultOverride(".m.rule.master", True)})
    assert CompiledRules.compile(rs).evaluate(ctx(msg("alice", **{"m.mentions": {"room": True}})), [ALICE]) == {}


def test_legacy_actions_are_ignored() -> None:
    rs = ruleset(default_push_rules(ALICE.user_id), [
        UserRule("override", "quiet", ["dont_notify"],
                 [{"kind": "event_match", "key": "type", "pattern": "m.room.message"}]),
        UserRule("underride", "coal", ["coalesce"], []),
    ], {})
    compiled = CompiledRules.compile(rs)
    assert compiled.evaluate(ctx(msg("hi")), [ALICE]) == {}
    assert compiled.evaluate(ctx({"type": "org.x", "content": {}}), [ALICE]) == {}


def test_user_rules_come_before_defaults_of_their_kind() -> None:
    rs = ruleset(default_push_rules(ALICE.user_id), [
        UserRule("room", "!r:a.test", ["notify", {"set_tweak": "highlight"}]),
        UserRule("sender", "@noisy:b.test", []),
    ], {})
    assert [r["rule_id"] for r in rs["room"]] == ["!r:a.test"]
    assert rs["override"][0]["rule_id"] == ".m.rule.master"
    compiled = CompiledRules.compile(rs)
    assert compiled.evaluate(ctx(msg("hi")), [ALICE])[ALICE.user_id].highlight
    other = dict(msg("hi"), room_id="!other:a.test", sender="@noisy:b.test")
    assert compiled.evaluate(ctx(other), [ALICE]) == {}


def test_filled_and_template_rules_agree() -> None:
    events = [msg("hello alice"), msg("x", **{"m.mentions": {"user_ids": [ALICE.user_id]}}), msg("bob"),
              {"type": "m.room.member", "state_key": ALICE.user_id, "sender": "@x:b",
               "content": {"membership": "invite"}}]
    for event in events:
        for m in MEMBERS:
            own = CompiledRules.compile(ruleset(default_push_rules(m.user_id), [], {}))
            shared = DEFAULT_RULES.evaluate(ctx(event), MEMBERS)
            assert own.evaluate(ctx(event), [m]) == {k: v for k, v in shared.items() if k == m.user_id}


def test_default_rules_are_the_specs_order() -> None:
    rules = default_push_rules("@alice:a.test")
    assert [r["rule_id"] for r in rules["override"]] == [
        ".m.rule.master", ".m.rule.suppress_notices", ".m.rule.invite_for_me", ".m.rule.member_event",
        ".m.rule.is_user_mention", ".m.rule.contains_display_name", ".m.rule.is_room_mention", ".m.rule.roomnotif",
        ".m.rule.tombstone", ".m.rule.reaction", ".m.rule.room.server_acl", ".m.rule.suppress_edits",
    ]
    assert rules["content"][0]["pattern"] == "alice"
    assert [r["rule_id"] for r in rules["underride"]] == [
        ".m.rule.call", ".m.rule.encrypted_room_one_to_one", ".m.rule.room_one_to_one", ".m.rule.message",
        ".m.rule.encrypted",
    ]
