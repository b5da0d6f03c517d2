"""State resolution of room version 1 (``homeserver.events.stateres_v1``) on hand-built rooms.

The spec (``rooms/v1.md``, "State resolution") gives the algorithm but no worked examples,
so each rule of it has a scenario here: the unconflicted union, power levels first, then
join rules, then members, then the rest, ordered by depth then ``sha1(event_id)``, with the
authorization rules applied in the partly resolved state. Events are v1-shaped: the ID is
``$name:example.org`` (chosen by the origin) and ``prev_events``/``auth_events`` are
``[event_id, {}]`` pairs. A hypothesis test checks that the result does not depend on the
order of the state sets nor of the keys within them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from homeserver.events.auth import auth_types_for_event
from homeserver.events.errors import StateResolutionError
from homeserver.events.event import Event, StateKey
from homeserver.events.stateres import resolve_state
from homeserver.events.stateres_v1 import resolve_state_v1, separate_state
from homeserver.events.versions import KNOWN_ROOM_VERSIONS, StateResAlgorithm

V1 = KNOWN_ROOM_VERSIONS["1"]

ALICE = "@alice:example.org"
BOB = "@bob:example.org"
CHARLIE = "@charlie:example.org"
EVE = "@eve:example.org"

PL: StateKey = ("m.room.power_levels", "")
JR: StateKey = ("m.room.join_rules", "")
TOPIC: StateKey = ("m.room.topic", "")
NAME: StateKey = ("m.room.name", "")


def member(user: str) -> StateKey:
    return ("m.room.member", user)


def eid(name: str) -> str:
    return f"${name}:example.org"


def sha1(event_id: str) -> str:
    return hashlib.sha1(event_id.encode()).hexdigest()


class Room:
    """Every event built, by ID; branches share it."""

    def __init__(self) -> None:
        self.events: dict[str, Event] = {}
        self.room_id = "!room:example.org"

    def resolve(self, *state_sets: dict[StateKey, str]) -> dict[StateKey, str]:
        return resolve_state(V1, list(state_sets), self.events)


@dataclasses.dataclass
class Branch:
    room: Room
    state: dict[StateKey, str] = dataclasses.field(default_factory=dict)
    head: str | None = None
    depth: int = 0

    def fork(self) -> Branch:
        return Branch(self.room, dict(self.state), self.head, self.depth)

    def send(self, name: str, event_type: str, sender: str, content: dict[str, Any],
             state_key: str = "", depth: int | None = None) -> str:
        """A state event on this branch: auth events from its state, depth one more than
        the head's unless given."""
        self.depth = self.depth + 1 if depth is None else depth
        pdu: dict[str, Any] = {
            "event_id": eid(name), "room_id": self.room.room_id, "type": event_type,
            "state_key": state_key, "sender": sender, "content": content,
            "prev_events": [[self.head, {}]] if self.head else [],
            "depth": self.depth, "origin_server_ts": 1000 + self.depth,
        }
        wanted = auth_types_for_event(pdu, V1)
        pdu["auth_events"] = [[self.state[k], {}] for k in sorted(wanted) if k in self.state]
        event = Event.from_pdu(pdu, V1, event_id=eid(name))
        self.room.events[event.event_id] = event
        self.state[event.state_tuple] = event.event_id
        self.head = event.event_id
        return event.event_id

    def membership(self, name: str, sender: str, target: str, membership: str,
                   depth: int | None = None) -> str:
        return self.send(name, "m.room.member", sender, {"membership": membership}, target, depth)

    def topic(self, name: str, sender: str, text: str, depth: int | None = None) -> str:
        return self.send(name, "m.room.topic", sender, {"topic": text}, "", depth)

    def power_levels(self, name: str, sender: str, users: dict[str, int], depth: int | None = None,
                     **extra: Any) -> str:
        content = {"users": {ALICE: 100, **users}, "users_default": 0, "events_default": 0,
                   "state_default": 50, "ban": 50, "kick": 50, "redact": 50, "invite": 0, **extra}
        return self.send(name, "m.room.power_levels", sender, content, "", depth)


def make_room() -> tuple[Room, Branch]:
    """A public room: alice created it (PL 100), bob and charlie have PL 50; bob, charlie
    and eve joined. Depths 1 to 8."""
    room = Room()
    b = Branch(room)
    b.send("create", "m.room.create", ALICE, {"creator": ALICE})
    b.membership("ima", ALICE, ALICE, "join")
    b.power_levels("ipower", ALICE, {BOB: 50, CHARLIE: 50})
    b.send("ijr", "m.room.join_rules", ALICE, {"join_rule": "public"})
    for user, name in ((BOB, "imb"), (CHARLIE, "imc"), (EVE, "ime")):
        b.membership(name, user, user, "join")
    return room, b


# -- the unconflicted state -----------------------------------------------------------------


def test_no_conflict_is_the_union_even_for_keys_only_one_state_holds() -> None:
    room, base = make_room()
    a, b = base.fork(), base.fork()
    t = a.topic("topic", BOB, "only in a")
    n = b.send("name", "m.room.name", CHARLIE, {"name": "only in b"})
    resolved = room.resolve(a.state, b.state)
    assert resolved == {**base.state, TOPIC: t, NAME: n}


def test_separate_state_counts_distinct_ids_per_key() -> None:
    s1 = {TOPIC: "$1", NAME: "$n"}
    s2 = {TOPIC: "$2", NAME: "$n"}
    s3 = {TOPIC: "$1", JR: "$j"}
    unconflicted, conflicted = separate_state([s1, s2, s3])
    assert unconflicted == {NAME: "$n", JR: "$j"}
    assert conflicted == {TOPIC: {"$1", "$2"}}


def test_without_conflicts_no_event_is_looked_at() -> None:
    def lookup(event_id: str) -> Event | None:
        raise AssertionError(f"looked up {event_id}")

    assert resolve_state_v1(V1, [{TOPIC: "$t"}, {NAME: "$n"}], lookup) == {TOPIC: "$t", NAME: "$n"}


def test_room_version_1_dispatches_to_v1_and_others_do_not() -> None:
    assert V1.state_res is StateResAlgorithm.V1
    assert all(v.state_res is not StateResAlgorithm.V1 for k, v in KNOWN_ROOM_VERSIONS.items() if k != "1")


# -- other events: highest depth, lowest sha1, passing auth ----------------------------------


def test_conflicting_topics_the_deeper_one_wins() -> None:
    room, base = make_room()
    a, b = base.fork(), base.fork()
    a.topic("ta", BOB, "a", depth=9)
    tb = b.topic("tb", CHARLIE, "b", depth=9)
    b_deeper = b.topic("tb2", CHARLIE, "b again")  # depth 10
    assert room.resolve(a.state, b.state)[TOPIC] == b_deeper
    assert tb != b_deeper


def test_conflicting_topics_at_the_same_depth_the_lower_sha1_wins() -> None:
    room, base = make_room()
    a, b = base.fork(), base.fork()
    ta = a.topic("ta", BOB, "a")
    tb = b.topic("tb", CHARLIE, "b")
    assert room.events[ta].depth == room.events[tb].depth
    expected = min((ta, tb), key=sha1)
    assert room.resolve(a.state, b.state)[TOPIC] == expected
    assert room.resolve(b.state, a.state)[TOPIC] == expected


def test_a_topic_that_fails_auth_in_the_resolved_state_loses_to_a_shallower_one() -> None:
    room, base = make_room()
    a, b = base.fork(), base.fork()
    a.topic("ta", BOB, "a")  # depth 9, bob at 50 on this branch
    b.power_levels("demote", ALICE, {CHARLIE: 50})  # depth 9: bob back to 0
    tb = b.topic("tb", CHARLIE, "b", depth=5)
    resolved = room.resolve(a.state, b.state)
    # Power levels first: "ipower" (depth 3) then "demote" (depth 9, alice may send it), so
    # bob is at 0 in R and his deeper topic fails; charlie's passes.
    assert resolved[PL] == eid("demote")
    assert resolved[TOPIC] == tb


def test_when_no_conflicting_event_passes_auth_the_shallowest_is_kept() -> None:
    room, base = make_room()
    a, b, c = base.fork(), base.fork(), base.fork()
    a.topic("ta", BOB, "a", depth=9)
    tb = b.topic("tb", CHARLIE, "b", depth=7)
    c.power_levels("demote", ALICE, {}, depth=8)  # bob and charlie to 0
    resolved = room.resolve(a.state, b.state, c.state)
    assert resolved[PL] == eid("demote")
    # Both topics fail against R; the one of lowest depth is kept (as Synapse does).
    assert resolved[TOPIC] == tb


# -- members: a ban against a join -------------------------------------------------------------


@pytest.mark.parametrize("ban_depth,join_depth", [(9, 10), (10, 9), (9, 9)])
def test_a_ban_beats_a_rejoin_whatever_the_depths(ban_depth: int, join_depth: int) -> None:
    room, base = make_room()
    base.membership("eleave", EVE, EVE, "leave")  # depth 9
    a, b = base.fork(), base.fork()
    ban = a.membership("ban", ALICE, EVE, "ban", depth=ban_depth + 1)
    b.membership("rejoin", EVE, EVE, "join", depth=join_depth + 1)
    # Either the ban comes first and the join is refused against it, or the join comes
    # first and the ban (by alice, PL 100) is allowed after it.
    assert room.resolve(a.state, b.state)[member(EVE)] == ban
    assert room.resolve(b.state, a.state)[member(EVE)] == ban


def test_a_kick_by_a_moderator_demoted_in_the_resolved_state_is_refused() -> None:
    room, base = make_room()
    a, b = base.fork(), base.fork()
    a.membership("kick", BOB, EVE, "leave", depth=10)  # bob is a moderator on this branch
    b.power_levels("demote", ALICE, {CHARLIE: 50})  # depth 9: bob to 0
    own = b.send("evename", "m.room.member", EVE, {"membership": "join", "displayname": "Eve"}, EVE,
                 depth=9)
    resolved = room.resolve(a.state, b.state)
    assert resolved[PL] == eid("demote")
    # The member pass: eve's own event (depth 9) goes in first; bob's kick (depth 10) is
    # then checked against R, where bob is at 0: refused.
    assert resolved[member(EVE)] == own
    # Without the demotion the kick, later and allowed, would win.
    c = base.fork()
    c.send("evename2", "m.room.member", EVE, {"membership": "join", "displayname": "E"}, EVE, depth=9)
    assert room.resolve(a.state, c.state)[member(EVE)] == eid("kick")


# -- power levels ------------------------------------------------------------------------------


def test_power_levels_the_later_allowed_one_wins() -> None:
    room, base = make_room()
    a, b = base.fork(), base.fork()
    a.power_levels("pa", ALICE, {BOB: 50, CHARLIE: 50}, events={"m.room.topic": 0})  # depth 9
    pb = b.power_levels("pb", ALICE, {BOB: 50, CHARLIE: 50, EVE: 10}, depth=10)
    assert room.resolve(a.state, b.state)[PL] == pb


def test_power_levels_a_refused_one_ends_the_pass() -> None:
    room, base = make_room()
    a, b, c = base.fork(), base.fork(), base.fork()
    pa = a.power_levels("pa", ALICE, {CHARLIE: 50}, depth=9)  # bob demoted to 0
    b.power_levels("pb", BOB, {BOB: 50, CHARLIE: 50, EVE: 20}, depth=10)  # by bob: refused after pa
    c.power_levels("pc", ALICE, {CHARLIE: 50, EVE: 30}, depth=11)  # allowed, but the pass stopped
    assert room.resolve(a.state, b.state, c.state)[PL] == pa
    assert room.resolve(c.state, a.state, b.state)[PL] == pa


def test_power_levels_at_one_depth_the_higher_sha1_goes_first() -> None:
    room, base = make_room()
    a, b = base.fork(), base.fork()
    pa = a.power_levels("pa", ALICE, {BOB: 50, CHARLIE: 50, EVE: 1})
    pb = b.power_levels("pb", ALICE, {BOB: 50, CHARLIE: 50, EVE: 2})
    # Both are allowed, so the one sorted last (lower sha1) wins.
    assert room.resolve(a.state, b.state)[PL] == min((pa, pb), key=sha1)


# -- join rules --------------------------------------------------------------------------------


def test_join_rules_conflict_the_later_allowed_one_wins() -> None:
    room, base = make_room()
    a, b = base.fork(), base.fork()
    a.send("jra", "m.room.join_rules", ALICE, {"join_rule": "invite"})  # depth 9
    jrb = b.send("jrb", "m.room.join_rules", BOB, {"join_rule": "public"}, depth=10)
    assert room.resolve(a.state, b.state)[JR] == jrb


def test_join_rules_are_checked_against_the_resolved_power_levels() -> None:
    room, base = make_room()
    a, b = base.fork(), base.fork()
    jra = a.send("jra", "m.room.join_rules", ALICE, {"join_rule": "invite"})  # depth 9
    a.power_levels("demote", ALICE, {CHARLIE: 50})  # depth 10: bob to 0
    b.send("jrb", "m.room.join_rules", BOB, {"join_rule": "public"}, depth=10)
    resolved = room.resolve(a.state, b.state)
    # Power levels: "demote" (a) wins over "ipower" (b). Then alice's join rules (depth 9)
    # go in first, and bob's (depth 10) are refused: he is at 0 in R.
    assert resolved[PL] == eid("demote")
    assert resolved[JR] == jra


def test_a_missing_conflicting_event_is_an_error() -> None:
    room, base = make_room()
    a, b = base.fork(), base.fork()
    a.topic("ta", BOB, "a")
    b.topic("tb", CHARLIE, "b")
    events = dict(room.events)
    del events[eid("tb")]
    with pytest.raises(StateResolutionError):
        resolve_state(V1, [a.state, b.state], events)


# -- order independence ------------------------------------------------------------------------

_USERS = [ALICE, BOB, CHARLIE, EVE]


def random_branch(rnd: random.Random, base: Branch, tag: str, steps: int) -> Branch:
    """A branch of ``steps`` random state changes (some of which the auth rules would
    refuse later: they are built from the branch's own state, never checked here)."""
    br = base.fork()
    for i in range(steps):
        name = f"{tag}{i}"
        kind = rnd.randrange(5)
        sender = rnd.choice(_USERS)
        depth = br.depth + rnd.randrange(1, 3)
        if kind == 0:
            br.topic(name, sender, name, depth=depth)
        elif kind == 1:
            users = {u: rnd.choice([0, 50, 75]) for u in _USERS[1:]}
            br.power_levels(name, rnd.choice([ALICE, BOB]), users, depth=depth)
        elif kind == 2:
            target = rnd.choice(_USERS[1:])
            membership = rnd.choice(["ban", "leave", "join"])
            who = target if membership in ("join", "leave") and rnd.random() < 0.5 else sender
            br.membership(name, who, target, membership, depth=depth)
        elif kind == 3:
            br.send(name, "m.room.join_rules", sender, {"join_rule": rnd.choice(["public", "invite"])},
                    depth=depth)
        else:
            br.send(name, "m.room.name", sender, {"name": name}, depth=depth)
    return br


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), branches=st.integers(2, 4), steps=st.integers(1, 6),
       order=st.randoms(use_true_random=False))
def test_the_result_does_not_depend_on_the_order_of_the_inputs(
    seed: int, branches: int, steps: int, order: random.Random
) -> None:
    rnd = random.Random(seed)
    room, base = make_room()
    states = [random_branch(rnd, base, f"b{i}x", steps).state for i in range(branches)]
    expected = resolve_state_v1(V1, states, room.events)
    # Shuffle the state sets and the key order inside each, and look events up through a
    # function rather than a mapping: the same state comes out.
    shuffled = []
    for s in order.sample(states, len(states)):
        items = list(s.items())
        order.shuffle(items)
        shuffled.append(dict(items))
    assert resolve_state_v1(V1, shuffled, room.events.get) == expected
    # Every key of every input is in the result, with one of the inputs' values.
    for key in set().union(*states):
        assert expected[key] in {s[key] for s in states if key in s}
