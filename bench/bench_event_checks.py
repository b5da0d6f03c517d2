"""Per-event cost of the checks on receipt of a PDU, for an m.room.message in a v12 room.

Prints the median time (µs) of format check, content hash, reference hash / event ID,
signature verification and auth check, and their sum. Run: .venv/bin/python bench/...
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nacl.signing import SigningKey

from homeserver.events.auth import auth_types_for_event, check_auth_rules
from homeserver.events.event import Event, StateKey
from homeserver.events.format import check_pdu_format
from homeserver.events.hashes import compute_event_id, room_id_for_create
from homeserver.events.signing import (
    check_content_hash,
    sign_event,
    verify_event_signatures,
)
from homeserver.events.versions import ROOM_V12

RUNS = 5000
SERVER = "example.org"


def make_key() -> Any:
    key: Any = SigningKey(b"s" * 32)
    key.alg = "ed25519"
    key.version = "a1"
    return key


def build_room(key: Any) -> tuple[dict[StateKey, Event], dict[str, Any]]:
    """A v12 room (creator, 50 members, power levels, join rules) and a signed message."""
    version = ROOM_V12
    state: dict[StateKey, Event] = {}
    creator = f"@creator:{SERVER}"

    def add(pdu: dict[str, Any]) -> Event:
        signed = sign_event(pdu, version, SERVER, key)
        event = Event.from_pdu(signed, version)
        if event.state_key is not None:
            state[event.state_tuple] = event
        return event

    base: dict[str, Any] = {"origin_server_ts": 1_700_000_000_000, "hashes": {},
                            "signatures": {}, "depth": 1}
    create = {**base, "type": "m.room.create", "state_key": "", "sender": creator,
              "content": {"room_version": "12"}, "prev_events": [], "auth_events": []}
    create_event = add(create)
    room_id = room_id_for_create(create_event.pdu, version)
    last = create_event.event_id
    members = [creator] + [f"@user{i}:{SERVER}" for i in range(50)]
    for depth, (type_, sender, state_key, content) in enumerate(
        [("m.room.member", creator, creator, {"membership": "join"}),
         ("m.room.power_levels", creator, "", {"users": {members[1]: 50}}),
         ("m.room.join_rules", creator, "", {"join_rule": "public"})]
        + [("m.room.member", u, u, {"membership": "join"}) for u in members[1:]],
        start=2,
    ):
        pdu = {**base, "type": type_, "sender": sender, "state_key": state_key,
               "content": content, "room_id": room_id, "prev_events": [last], "depth": depth}
        pdu["auth_events"] = sorted(state[k].event_id for k in auth_types_for_event(pdu)
                                    if k in state)
        last = add(pdu).event_id
    message = {**base, "type": "m.room.message", "sender": members[7], "room_id": room_id,
               "content": {"msgtype": "m.text", "body": "Hello, world! Ça va? 🎉 " * 4},
               "prev_events": [last], "depth": 60}
    message["auth_events"] = sorted(state[k].event_id for k in auth_types_for_event(message)
                                    if k in state)
    message["unsigned"] = {"age": 12}
    return state, sign_event(message, version, SERVER, key)


def median_us(fn: Callable[[], object]) -> float:
    for _ in range(200):
        fn()
    samples = []
    for _ in range(RUNS):
        start = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - start)
    return statistics.median(samples) / 1000


def main() -> None:
    key = make_key()
    state, pdu = build_room(key)
    keys = {SERVER: {"ed25519:a1": key.verify_key}}
    event = Event.from_pdu(pdu, ROOM_V12)
    steps: list[tuple[str, Callable[[], object]]] = [
        ("format check", lambda: check_pdu_format(pdu, ROOM_V12)),
        ("content hash", lambda: check_content_hash(pdu, ROOM_V12)),
        ("reference hash / event ID", lambda: compute_event_id(pdu, ROOM_V12)),
        ("signature verification", lambda: verify_event_signatures(pdu, ROOM_V12, keys)),
        ("auth check (room state)", lambda: check_auth_rules(event, state)),
    ]
    print(f"m.room.message in a v12 room, {len(state)} state events, "
          f"median of {RUNS} runs")
    total = 0.0
    for name, fn in steps:
        us = median_us(fn)
        total += us
        print(f"  {name:<28} {us:8.1f} µs")
    print(f"  {'sum':<28} {total:8.1f} µs")


if __name__ == "__main__":
    main()
