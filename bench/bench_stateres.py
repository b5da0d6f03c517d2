"""Benchmark of state resolution (homeserver.events.stateres) on synthetic rooms.

Builds a room (v1, v2, v11 and v12) with N state events (mostly members, with power level updates,
displayname changes and topics along the way), forks it into two branches with a few dozen
conflicting changes (power levels, topics, joins, leaves, kicks, displaynames, join rules),
and prints the median time to resolve the two forks, the fast path time for two agreeing
state sets, and the same for a 10,000-state-event room. Room v1 uses the original state
resolution algorithm (``homeserver/events/stateres_v1.py``), room v2 the same room shape
with algorithm v2, so the two lines compare the algorithms.

Run: ``.venv/bin/python bench/bench_stateres.py``
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from homeserver.events.auth import auth_types_for_event
from homeserver.events.event import Event, StateKey
from homeserver.events.stateres import resolve_state
from homeserver.events.versions import ROOM_V1, ROOM_V2, ROOM_V11, ROOM_V12, RoomVersion

RUNS = 5
ALICE = "@alice:example.org"
MOD = "@mod:example.org"


class Builder:
    def __init__(self, version: RoomVersion) -> None:
        self.version = version
        self.events: dict[str, Event] = {}
        self.room_id = "!bench:example.org"
        self.counter = 0

    def send(self, state: dict[StateKey, str], event_type: str, sender: str,
             content: dict[str, Any], state_key: str = "", prev: str | None = None) -> str:
        self.counter += 1
        pdu: dict[str, Any] = {
            "type": event_type, "state_key": state_key, "sender": sender,
            "content": content, "prev_events": [prev] if prev else [],
            "depth": self.counter, "origin_server_ts": 1_000_000 + self.counter,
        }
        if event_type == "m.room.create":
            if self.version.room_id_is_create_hash:
                event = Event.from_pdu(pdu, self.version)
                self.room_id = event.room_id
            else:
                pdu["room_id"] = self.room_id
                event = Event.from_pdu(pdu, self.version, event_id=f"$e{self.counter}")
        else:
            pdu["room_id"] = self.room_id
            wanted = auth_types_for_event(pdu, self.version)
            pdu["auth_events"] = sorted(state[k] for k in wanted if k in state)
            event = Event.from_pdu(pdu, self.version, event_id=f"$e{self.counter}")
        self.events[event.event_id] = event
        state[event.state_tuple] = event.event_id
        return event.event_id

    def power_levels(self, users: dict[str, int]) -> dict[str, Any]:
        if not self.version.creators_have_infinite_power:
            users = {ALICE: 100, **users}
        return {"users": users, "state_default": 50, "ban": 50, "kick": 50, "invite": 0}


def build_room(version: RoomVersion, size: int) -> tuple[Builder, dict[StateKey, str],
                                                            dict[StateKey, str]]:
    """Returns the builder and the two forked state maps."""
    b = Builder(version)
    state: dict[StateKey, str] = {}
    create_content = {"room_version": version.identifier}
    if not version.create_uses_sender_as_creator:
        create_content["creator"] = ALICE
    create = b.send(state, "m.room.create", ALICE, create_content)
    b.send(state, "m.room.member", ALICE, {"membership": "join"}, ALICE, prev=create)
    users = {MOD: 50}
    b.send(state, "m.room.power_levels", ALICE, b.power_levels(users))
    b.send(state, "m.room.join_rules", ALICE, {"join_rule": "public"})
    b.send(state, "m.room.member", MOD, {"membership": "join"}, MOD)
    i = 0
    while len(state) < size:
        i += 1
        user = f"@user{i}:example.org"
        b.send(state, "m.room.member", user, {"membership": "join"}, user)
        if i % 7 == 0:
            b.send(state, "m.room.member", user, {"membership": "join", "displayname": f"U{i}"},
                   user)
        if i % 100 == 0:
            users[user] = 10
            b.send(state, "m.room.power_levels", ALICE, b.power_levels(dict(users)))
        if i % 50 == 0:
            b.send(state, f"org.example.state{i}", MOD, {"n": i})
    base_users = dict(users)

    fork_a, fork_b = dict(state), dict(state)
    # Branch a: alice promotes a few users, topics, self-leaves and kicks by the moderator.
    users_a = dict(base_users)
    for j in range(1, 6):
        users_a[f"@user{j}:example.org"] = 20
    b.send(fork_a, "m.room.power_levels", ALICE, b.power_levels(users_a))
    for j in range(10):
        b.send(fork_a, "m.room.topic", MOD, {"topic": f"a{j}"})
        b.send(fork_a, f"org.example.shared{j}", MOD, {"a": j})
    for j in range(20, 35):
        user = f"@user{j}:example.org"
        b.send(fork_a, "m.room.member", user, {"membership": "leave"}, user)
    for j in range(40, 50):
        b.send(fork_a, "m.room.member", MOD, {"membership": "leave"}, f"@user{j}:example.org")
    # Branch b: the moderator changes power levels, topics, new joins, renames, join rules.
    users_b = dict(base_users)
    users_b["@user60:example.org"] = 40
    b.send(fork_b, "m.room.power_levels", MOD, b.power_levels(users_b))
    for j in range(10):
        b.send(fork_b, "m.room.topic", MOD, {"topic": f"b{j}"})
        b.send(fork_b, f"org.example.shared{j}", MOD, {"b": j})
    for j in range(15):
        user = f"@new{j}:example.org"
        b.send(fork_b, "m.room.member", user, {"membership": "join"}, user)
    for j in range(40, 50):
        user = f"@user{j}:example.org"
        b.send(fork_b, "m.room.member", user, {"membership": "join", "displayname": "b"}, user)
    b.send(fork_b, "m.room.join_rules", ALICE, {"join_rule": "invite"})
    return b, fork_a, fork_b


def median_ms(fn: Callable[[], object], runs: int = RUNS) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def bench_one(version: RoomVersion, size: int) -> None:
    b, fork_a, fork_b = build_room(version, size)
    conflicted = sum(1 for k in fork_a.keys() | fork_b.keys() if fork_a.get(k) != fork_b.get(k))
    result = resolve_state(version, [fork_a, fork_b], b.events)
    resolve = median_ms(lambda: resolve_state(version, [fork_a, fork_b], b.events))
    same = dict(fork_a)
    fast = median_ms(lambda: resolve_state(version, [fork_a, same], b.events))
    print(f"room v{version.identifier} state={len(fork_a):>6} events={len(b.events):>6} "
          f"conflicted_keys={conflicted:>3} result={len(result):>6}  "
          f"resolve={resolve:8.1f} ms  fast_path={fast:6.2f} ms")


def main() -> None:
    for version in (ROOM_V1, ROOM_V2, ROOM_V11, ROOM_V12):
        for size in (1_000, 10_000):
            bench_one(version, size)


if __name__ == "__main__":
    main()
