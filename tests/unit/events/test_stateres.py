"""State resolution (v2 for rooms 10/11, v2.1 for room 12) on hand-built room graphs.

A tiny builder makes rooms: ``Room`` holds every event, a ``Branch`` is one line of
history (its state map and head). Events get readable synthetic IDs (``$topic_a``); in
room v12 only the create event has a real ID, since the room ID is derived from it.
Auth events are picked per the auth events selection algorithm from the branch's state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from homeserver.events.auth import auth_types_for_event
from homeserver.events.errors import StateResolutionError
from homeserver.events.event import Event, StateKey
from homeserver.events.stateres import _Resolver, resolve_state
from homeserver.events.versions import ROOM_V5, ROOM_V9, ROOM_V10, ROOM_V11, ROOM_V12, RoomVersion

ALICE = "@alice:example.org"
BOB = "@bob:example.org"
CHARLIE = "@charlie:example.org"
DAVE = "@dave:example.org"
EVE = "@eve:example.org"
ZARA = "@zara:example.org"

PL: StateKey = ("m.room.power_levels", "")
JR: StateKey = ("m.room.join_rules", "")
TOPIC: StateKey = ("m.room.topic", "")
CREATE: StateKey = ("m.room.create", "")


def member(user: str) -> StateKey:
    return ("m.room.member", user)


class Room:
    def __init__(self, version: RoomVersion) -> None:
        self.version = version
        self.events: dict[str, Event] = {}
        self.room_id = "!room:example.org"
        self.clock = 1000

    def build(
        self,
        branch: Branch,
        name: str,
        event_type: str,
        sender: str,
        content: dict[str, Any],
        state_key: str = "",
        ts: int | None = None,
    ) -> str:
        """Add a state event on ``branch`` (auth events from its state) and apply it."""
        if ts is None:
            self.clock += 10
            ts = self.clock
        pdu: dict[str, Any] = {
            "type": event_type,
            "state_key": state_key,
            "sender": sender,
            "content": content,
            "prev_events": [branch.head] if branch.head else [],
            "depth": len(branch.state) + 1,
            "origin_server_ts": ts,
        }
        if event_type == "m.room.create":
            if self.version.room_id_is_create_hash:
                event = Event.from_pdu(pdu, self.version)
                self.room_id = event.room_id
            else:
                pdu["room_id"] = self.room_id
                pdu["auth_events"] = []
                event = Event.from_pdu(pdu, self.version, event_id="$" + name)
        else:
            pdu["room_id"] = self.room_id
            wanted = auth_types_for_event(pdu, self.version)
            pdu["auth_events"] = sorted(branch.state[k] for k in wanted if k in branch.state)
            event = Event.from_pdu(pdu, self.version, event_id="$" + name)
        self.events[event.event_id] = event
        branch.state[event.state_tuple] = event.event_id
        branch.head = event.event_id
        return event.event_id

    def power_levels(self, users: dict[str, int], **extra: Any) -> dict[str, Any]:
        if not self.version.creators_have_infinite_power:
            users = {ALICE: 100, **users}
        return {
            "users": users,
            "users_default": 0,
            "events_default": 0,
            "state_default": 50,
            "ban": 50,
            "kick": 50,
            "redact": 50,
            "invite": 0,
            **extra,
        }

    def resolve(self, *state_sets: dict[StateKey, str]) -> dict[StateKey, str]:
        return resolve_state(self.version, list(state_sets), self.events)


@dataclasses.dataclass
class Branch:
    room: Room
    state: dict[StateKey, str] = dataclasses.field(default_factory=dict)
    head: str | None = None

    def fork(self) -> Branch:
        return Branch(self.room, dict(self.state), self.head)

    def send(self, name: str, event_type: str, sender: str, content: dict[str, Any],
             state_key: str = "", ts: int | None = None) -> str:
        return self.room.build(self, name, event_type, sender, content, state_key, ts)

    def join(self, name: str, user: str, ts: int | None = None) -> str:
        return self.send(name, "m.room.member", user, {"membership": "join"}, user, ts)

    def membership(self, name: str, sender: str, target: str, membership: str,
                   ts: int | None = None) -> str:
        return self.send(name, "m.room.member", sender, {"membership": membership}, target, ts)

    def topic(self, name: str, sender: str, text: str, ts: int | None = None) -> str:
        return self.send(name, "m.room.topic", sender, {"topic": text}, "", ts)

    def power_levels(self, name: str, sender: str, users: dict[str, int],
                     ts: int | None = None, **extra: Any) -> str:
        content = self.room.power_levels(users, **extra)
        return self.send(name, "m.room.power_levels", sender, content, "", ts)


def make_room(version: RoomVersion) -> tuple[Room, Branch]:
    """A public room: alice created it (PL 100, or creator in v12), bob and charlie have
    PL 50, bob, charlie and eve joined."""
    room = Room(version)
    base = Branch(room)
    create_content: dict[str, Any] = {"room_version": version.identifier}
    if not version.create_uses_sender_as_creator:
        create_content["creator"] = ALICE
    base.send("create", "m.room.create", ALICE, create_content)
    base.join("join_alice", ALICE)
    base.power_levels("pl0", ALICE, {BOB: 50, CHARLIE: 50})
    base.send("jr_public", "m.room.join_rules", ALICE, {"join_rule": "public"})
    base.join("join_bob", BOB)
    base.join("join_charlie", CHARLIE)
    base.join("join_eve", EVE)
    return room, base


ALL_VERSIONS = pytest.mark.parametrize("version", [ROOM_V5, ROOM_V9, ROOM_V10, ROOM_V11, ROOM_V12],
                                       ids=lambda v: f"v{v.identifier}")


def test_builder_events_pass_auth_in_their_own_branch() -> None:
    """Sanity of the fixtures: the base room resolves against itself to itself."""
    room, base = make_room(ROOM_V12)
    assert room.resolve(base.state, base.state.copy()) == base.state
    assert len(base.state) == 7


@ALL_VERSIONS
def test_concurrent_ban_and_power_level_demotion(version: RoomVersion) -> None:
    # Alice demotes bob on one branch while bob bans eve on the other: the demotion is
    # ordered first (alice has more power), so bob's ban no longer passes.
    room, base = make_room(version)
    a, b = base.fork(), base.fork()
    a.power_levels("pl_demote_bob", ALICE, {CHARLIE: 50})
    b.membership("ban_eve", BOB, EVE, "ban")

    resolved = room.resolve(a.state, b.state)

    expected = dict(base.state)
    expected[PL] = "$pl_demote_bob"
    expected[member(EVE)] = "$join_eve"
    assert resolved == expected


@ALL_VERSIONS
def test_ban_survives_when_power_is_kept(version: RoomVersion) -> None:
    # Control for the test above: the PL change on branch a does not touch bob.
    room, base = make_room(version)
    a, b = base.fork(), base.fork()
    a.power_levels("pl_promote_zara", ALICE, {BOB: 50, CHARLIE: 50, ZARA: 10})
    b.membership("ban_eve", BOB, EVE, "ban")

    resolved = room.resolve(a.state, b.state)

    expected = dict(base.state)
    expected[PL] = "$pl_promote_zara"
    expected[member(EVE)] = "$ban_eve"
    assert resolved == expected


@ALL_VERSIONS
def test_topic_reset_after_ban(version: RoomVersion) -> None:
    # Bob changes the topic while alice bans him: the ban is a power event and wins,
    # and bob's topic is rejected against the resolved membership, so the old topic stays.
    room, base = make_room(version)
    base.topic("topic_alice", ALICE, "by alice")
    a, b = base.fork(), base.fork()
    a.topic("topic_bob", BOB, "by bob")
    b.membership("ban_bob", ALICE, BOB, "ban")

    resolved = room.resolve(a.state, b.state)

    expected = dict(base.state)
    expected[TOPIC] = "$topic_alice"
    expected[member(BOB)] = "$ban_bob"
    assert resolved == expected


@ALL_VERSIONS
def test_join_rules_change_racing_a_join(version: RoomVersion) -> None:
    room, base = make_room(version)
    a, b = base.fork(), base.fork()
    a.send("jr_invite", "m.room.join_rules", ALICE, {"join_rule": "invite"})
    b.join("join_dave", DAVE)

    resolved = room.resolve(a.state, b.state)

    expected = dict(base.state)
    expected[JR] = "$jr_invite"  # dave's join fails against the invite-only room
    assert resolved == expected
    assert member(DAVE) not in resolved


@ALL_VERSIONS
def test_invited_join_survives_join_rules_change(version: RoomVersion) -> None:
    room, base = make_room(version)
    base.membership("invite_dave", ALICE, DAVE, "invite")
    a, b = base.fork(), base.fork()
    a.send("jr_invite", "m.room.join_rules", ALICE, {"join_rule": "invite"})
    b.join("join_dave", DAVE)

    resolved = room.resolve(a.state, b.state)

    expected = dict(base.state)
    expected[JR] = "$jr_invite"
    expected[member(DAVE)] = "$join_dave"
    assert resolved == expected


@ALL_VERSIONS
def test_power_level_changes_on_both_branches_higher_power_first(
    version: RoomVersion,
) -> None:
    # Charlie's change is earlier but alice has more power: alice's change is applied
    # first, it demotes charlie, and charlie's change then fails.
    room, base = make_room(version)
    a, b = base.fork(), base.fork()
    b.power_levels("pl_charlie", CHARLIE, {BOB: 50, CHARLIE: 50, ZARA: 50}, ts=5000)
    a.power_levels("pl_alice", ALICE, {BOB: 50}, ts=6000)

    resolved = room.resolve(a.state, b.state)

    expected = dict(base.state)
    expected[PL] = "$pl_alice"
    assert resolved == expected


@ALL_VERSIONS
@pytest.mark.parametrize(("ts_a", "ts_b", "winner"), [(5000, 6000, "$pl_b"),
                                                      (6000, 5000, "$pl_a"),
                                                      (5000, 5000, "$pl_b")])
def test_power_level_changes_same_sender_ordered_by_ts_then_id(
    version: RoomVersion, ts_a: int, ts_b: int, winner: str
) -> None:
    # Same sender, same power: the earlier event is applied first, so the later one wins;
    # at equal timestamps the smaller event ID goes first.
    room, base = make_room(version)
    a, b = base.fork(), base.fork()
    a.power_levels("pl_a", ALICE, {BOB: 50, CHARLIE: 40}, ts=ts_a)
    b.power_levels("pl_b", ALICE, {BOB: 40, CHARLIE: 50}, ts=ts_b)

    resolved = room.resolve(a.state, b.state)

    expected = dict(base.state)
    expected[PL] = winner
    assert resolved == expected


@ALL_VERSIONS
def test_mainline_position_beats_timestamp(version: RoomVersion) -> None:
    # topic_a cites the newer power levels (mainline position 0), topic_b the older one
    # (position 1): topic_b sorts first although it is later, and topic_a wins.
    room, base = make_room(version)
    a, b = base.fork(), base.fork()
    a.power_levels("pl_1", ALICE, {BOB: 50, CHARLIE: 50}, ts=5000,
                   events={"m.room.name": 50})
    a.topic("topic_a", BOB, "a", ts=5100)
    b.topic("topic_b", BOB, "b", ts=9000)

    resolved = room.resolve(a.state, b.state)

    expected = dict(base.state)
    expected[PL] = "$pl_1"
    expected[TOPIC] = "$topic_a"
    assert resolved == expected


@ALL_VERSIONS
@pytest.mark.parametrize(("ts_a", "ts_b", "winner"), [(5000, 6000, "$topic_b"),
                                                      (6000, 5000, "$topic_a"),
                                                      (5000, 5000, "$topic_b")])
def test_mainline_ties_broken_by_ts_then_event_id(
    version: RoomVersion, ts_a: int, ts_b: int, winner: str
) -> None:
    room, base = make_room(version)
    a, b = base.fork(), base.fork()
    a.topic("topic_a", BOB, "a", ts=ts_a)
    b.topic("topic_b", CHARLIE, "b", ts=ts_b)

    resolved = room.resolve(a.state, b.state)

    expected = dict(base.state)
    expected[TOPIC] = winner
    assert resolved == expected


def _ban_after_pl_change(version: RoomVersion) -> tuple[Room, Branch, Branch, Branch]:
    """Bob changes the power levels, then alice bans bob citing the state before that
    change; both branches hold the ban, only one holds bob's change."""
    room, base = make_room(version)
    a = base.fork()
    a.power_levels("pl_bob", BOB, {BOB: 50, CHARLIE: 50}, events={"m.room.name": 50})
    b = base.fork()
    ban = b.membership("ban_bob", ALICE, BOB, "ban")
    a.state[member(BOB)] = ban
    return room, base, a, b


@pytest.mark.parametrize("version", [ROOM_V10, ROOM_V11], ids=["v10", "v11"])
def test_v2_checks_power_events_against_unconflicted_state(version: RoomVersion) -> None:
    # v2 starts iterative auth checks from the unconflicted state, where bob is banned:
    # bob's power levels change fails.
    room, base, a, b = _ban_after_pl_change(version)
    resolved = room.resolve(a.state, b.state)

    expected = dict(base.state)
    expected[member(BOB)] = "$ban_bob"
    assert resolved == expected


def test_v21_checks_power_events_from_an_empty_state() -> None:
    # v2.1 starts from an empty state: bob's change is checked against its own auth
    # events (bob joined) and is kept; the unconflicted ban is applied at the end.
    room, base, a, b = _ban_after_pl_change(ROOM_V12)
    resolved = room.resolve(a.state, b.state)

    expected = dict(base.state)
    expected[member(BOB)] = "$ban_bob"
    expected[PL] = "$pl_bob"
    assert resolved == expected


def test_same_graph_differs_between_v2_and_v21() -> None:
    # The v12 graph run through the v2 algorithm gives the v2 answer.
    room, _base, a, b = _ban_after_pl_change(ROOM_V12)
    v12_as_v2 = dataclasses.replace(ROOM_V12, state_res=ROOM_V11.state_res)
    as_v2 = resolve_state(v12_as_v2, [a.state, b.state], room.events)
    as_v21 = resolve_state(ROOM_V12, [a.state, b.state], room.events)
    assert as_v2[PL] == "$pl0"
    assert as_v21[PL] == "$pl_bob"


@ALL_VERSIONS
def test_unconflicted_state_wins_in_the_end(version: RoomVersion) -> None:
    # Key present in only one state set is conflicted; keys identical in all are kept.
    room, base = make_room(version)
    a, b = base.fork(), base.fork()
    a.topic("topic_a", BOB, "only on a")
    b.join("join_dave", DAVE)

    resolved = room.resolve(a.state, b.state)

    expected = dict(base.state)
    expected[TOPIC] = "$topic_a"
    expected[member(DAVE)] = "$join_dave"
    assert resolved == expected


@ALL_VERSIONS
def test_three_way_resolution(version: RoomVersion) -> None:
    room, base = make_room(version)
    a, b, c = base.fork(), base.fork(), base.fork()
    a.topic("topic_a", BOB, "a", ts=5000)
    b.membership("kick_charlie", BOB, CHARLIE, "leave")  # bob cannot kick an equal: bad
    b.topic("topic_b", CHARLIE, "b", ts=5100)
    c.membership("kick_eve", CHARLIE, EVE, "leave", ts=4000)

    resolved = room.resolve(a.state, b.state, c.state)

    expected = dict(base.state)
    expected[TOPIC] = "$topic_b"
    expected[member(EVE)] = "$kick_eve"
    assert resolved == expected


def test_conflicted_subgraph_adds_events_between_conflicted_events() -> None:
    # pl_bob (conflicted) -> join_bob (unconflicted) -> jr_public (conflicted): join_bob
    # lies on an auth path between two conflicted events.
    room, base = make_room(ROOM_V12)
    a, b = base.fork(), base.fork()
    a.power_levels("pl_bob", BOB, {BOB: 50, CHARLIE: 50}, events={"m.room.name": 50})
    b.send("jr_invite", "m.room.join_rules", ALICE, {"join_rule": "invite"})
    resolver = _Resolver(ROOM_V12, room.events)
    conflicted = {"$pl_bob", "$pl0", "$jr_public", "$jr_invite"}
    subgraph = resolver.conflicted_subgraph(conflicted)
    assert subgraph == conflicted | {"$join_bob"}
    # And the resolution still gives both changes.
    expected = dict(base.state)
    expected[PL] = "$pl_bob"
    expected[JR] = "$jr_invite"
    assert room.resolve(a.state, b.state) == expected


@ALL_VERSIONS
def test_conflicted_subgraph_brings_back_the_power_levels(version: RoomVersion) -> None:
    # Both branches hold pl_1 (unconflicted). Alice's membership is conflicted (join vs a
    # later displayname change), and topic_a -> pl_1 -> join_alice is an auth path
    # between conflicted events. In v2.1 that puts pl_1 (and pl0) in the full conflicted
    # set, so the partial state has power levels and mainline ordering puts topic_b
    # (citing the older pl0) first: topic_a wins, as in v2. Without the subgraph, v2.1
    # would have no mainline and order the topics by timestamp (topic_b would win).
    room, base = make_room(version)
    a, b = base.fork(), base.fork()
    b.topic("topic_b", BOB, "b", ts=9000)
    pl_1 = a.power_levels("pl_1", ALICE, {BOB: 50, CHARLIE: 50}, ts=4000,
                          events={"m.room.name": 50})
    a.topic("topic_a", BOB, "a", ts=5000)
    b.state[PL] = pl_1
    b.send("rename_alice", "m.room.member", ALICE, {"membership": "join",
                                                    "displayname": "Alice"}, ALICE, ts=6000)

    resolved = room.resolve(a.state, b.state)

    expected = dict(base.state)
    expected[PL] = "$pl_1"
    expected[TOPIC] = "$topic_a"
    expected[member(ALICE)] = "$rename_alice"
    assert resolved == expected


def test_auth_chain_is_memoised_and_complete() -> None:
    room, _base = make_room(ROOM_V11)
    resolver = _Resolver(ROOM_V11, room.events)
    chain = resolver.auth_chain("$join_eve")
    assert chain == {"$create", "$pl0", "$jr_public", "$join_alice"}
    assert resolver.auth_chain("$join_eve") is chain


def test_auth_cycle_is_an_error() -> None:
    room, _ = make_room(ROOM_V11)
    events = dict(room.events)
    for name, other in (("x", "y"), ("y", "x")):
        events["$" + name] = Event.from_pdu(
            {"type": "m.room.topic", "state_key": "", "sender": ALICE, "content": {},
             "room_id": room.room_id, "auth_events": ["$" + other], "prev_events": [],
             "depth": 1, "origin_server_ts": 1},
            ROOM_V11, event_id="$" + name)
    resolver = _Resolver(ROOM_V11, events)
    with pytest.raises(StateResolutionError, match="cycle"):
        resolver.auth_chain("$x")


def test_fast_path_does_not_load_events() -> None:
    room, base = make_room(ROOM_V12)
    calls: list[str] = []

    def lookup(event_id: str) -> Event | None:
        calls.append(event_id)
        return room.events.get(event_id)

    same = dict(reversed(list(base.state.items())))
    assert resolve_state(ROOM_V12, [base.state, same, base.state], lookup) == base.state
    assert resolve_state(ROOM_V12, [base.state], lookup) == base.state
    assert resolve_state(ROOM_V12, [], lookup) == {}
    assert calls == []
    # Any difference does load events.
    other = dict(base.state)
    other[TOPIC] = "$nope"
    with pytest.raises(StateResolutionError, match=r"\$nope"):
        resolve_state(ROOM_V12, [base.state, other], lookup)
    assert calls


@ALL_VERSIONS
def test_missing_auth_event_is_an_error(version: RoomVersion) -> None:
    room, base = make_room(version)
    a, b = base.fork(), base.fork()
    a.topic("topic_a", BOB, "a")
    b.topic("topic_b", BOB, "b")
    events = dict(room.events)
    del events["$join_bob"]
    with pytest.raises(StateResolutionError, match="join_bob"):
        resolve_state(version, [a.state, b.state], events)


def test_result_is_a_fresh_dict() -> None:
    room, base = make_room(ROOM_V11)
    result = room.resolve(base.state)
    result[TOPIC] = "$x"
    assert TOPIC not in base.state


# ---------------------------------------------------------------------------------------
# properties: random forks, resolved in any input order
# ---------------------------------------------------------------------------------------

USERS = [ALICE, BOB, CHARLIE, EVE, DAVE]

action = st.one_of(
    st.tuples(st.just("topic"), st.sampled_from(USERS)),
    st.tuples(st.just("pl"), st.sampled_from(USERS), st.sampled_from(USERS[1:]),
              st.sampled_from([0, 10, 50, 60])),
    st.tuples(st.just("ban"), st.sampled_from(USERS), st.sampled_from(USERS[1:])),
    st.tuples(st.just("kick"), st.sampled_from(USERS), st.sampled_from(USERS[1:])),
    st.tuples(st.just("join"), st.sampled_from(USERS[1:])),
    st.tuples(st.just("leave"), st.sampled_from(USERS[1:])),
    st.tuples(st.just("jr"), st.sampled_from(USERS), st.sampled_from(["public", "invite"])),
)


def build_forks(version: RoomVersion, plans: Sequence[Sequence[tuple[Any, ...]]],
                timestamps: Sequence[int]) -> tuple[Room, list[dict[StateKey, str]]]:
    room, base = make_room(version)
    clock = iter(timestamps)
    states = []
    for i, plan in enumerate(plans):
        branch = base.fork()
        for j, step in enumerate(plan):
            name = f"b{i}_{j}_{step[0]}"
            ts = 5000 + next(clock, 0)
            kind = step[0]
            if kind == "topic":
                branch.topic(name, step[1], name, ts=ts)
            elif kind == "pl":
                users = dict(room.events[branch.state[PL]].content["users"])
                users.pop(ALICE, None)
                users[step[2]] = step[3]
                branch.power_levels(name, step[1], users, ts=ts)
            elif kind in ("ban", "kick"):
                branch.membership(name, step[1], step[2], "ban" if kind == "ban" else "leave",
                                  ts=ts)
            elif kind in ("join", "leave"):
                branch.membership(name, step[1], step[1], kind, ts=ts)
            else:
                branch.send(name, "m.room.join_rules", step[1], {"join_rule": step[2]}, ts=ts)
        states.append(branch.state)
    return room, states


fork_plans = st.lists(st.lists(action, max_size=4), min_size=2, max_size=3)
PROPERTY_SETTINGS = settings(max_examples=60, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow])


@PROPERTY_SETTINGS
@given(version=st.sampled_from([ROOM_V11, ROOM_V12]), plans=fork_plans,
       timestamps=st.lists(st.integers(0, 20), min_size=12, max_size=12), data=st.data())
def test_result_does_not_depend_on_input_order(
    version: RoomVersion, plans: list[list[tuple[Any, ...]]], timestamps: list[int],
    data: st.DataObject,
) -> None:
    room, states = build_forks(version, plans, timestamps)
    reference = resolve_state(version, states, room.events)

    permuted = data.draw(st.permutations(states))
    shuffled_maps = []
    for state in permuted:
        items = data.draw(st.permutations(list(state.items())))
        shuffled_maps.append(dict(items))
    assert resolve_state(version, shuffled_maps, room.events) == reference
    # Repeating a state set changes nothing either.
    assert resolve_state(version, [*states, states[0]], room.events) == reference
    # The result keeps every unconflicted entry.
    for key, value in states[0].items():
        if all(s.get(key) == value for s in states):
            assert reference[key] == value
    # And every entry is an event of that key.
    for key, value in reference.items():
        assert room.events[value].state_tuple == key
