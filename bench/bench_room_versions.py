"""Per-version cost of the checks on receipt of an m.room.message, room versions 1 to 12.

For each version: a room (creator, 50 members, power levels, join rules) built with that
version's rules (origin event IDs and [id, hash] references in 1-2, the create event's
hash as room ID in 12), then the median time (µs) of the format check, content hash,
event ID, signature verification and auth check of a signed message, and their sum.
Run: .venv/bin/python bench/bench_room_versions.py [runs]
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
from homeserver.events.hashes import compute_event_id, event_reference, room_id_for_create
from homeserver.events.signing import check_content_hash, sign_event, verify_event_signatures
from homeserver.events.versions import KNOWN_ROOM_VERSIONS, RoomVersion

SERVER = "example.org"


def make_key() -> Any:
    key: Any = SigningKey(b"s" * 32)
    key.alg = "ed25519"
    key.version = "a1"
    return key


class RoomBuilder:
    def __init__(self, version: RoomVersion, key: Any) -> None:
        self.version = version
        self.key = key
        self.state: dict[StateKey, Event] = {}
        self.count = 0
        self.room_id: str | None = None if version.room_id_is_create_hash else f"!room:{SERVER}"
        self.last: Event | None = None

    def refs(self, events: list[Event]) -> list[Any]:
        if self.version.origin_event_ids:
            return [event_reference(e.pdu, self.version) for e in events]
        return [e.event_id for e in events]

    def pdu(self, type_: str, sender: str, content: dict[str, Any],
            state_key: str | None = None) -> dict[str, Any]:
        self.count += 1
        pdu: dict[str, Any] = {"origin_server_ts": 1_700_000_000_000, "hashes": {},
                               "signatures": {}, "depth": self.count, "type": type_,
                               "sender": sender, "content": content}
        if state_key is not None:
            pdu["state_key"] = state_key
        if self.room_id is not None:
            pdu["room_id"] = self.room_id
        if self.version.origin_event_ids:
            pdu["event_id"] = f"$e{self.count}:{SERVER}"
        prevs = [self.last] if self.last is not None else []
        pdu["prev_events"] = self.refs(prevs)
        wanted = auth_types_for_event(pdu, self.version)
        pdu["auth_events"] = self.refs(
            sorted((self.state[k] for k in wanted if k in self.state), key=lambda e: e.event_id)
        )
        return sign_event(pdu, self.version, SERVER, self.key)

    def add(self, pdu: dict[str, Any]) -> Event:
        event = Event.from_pdu(pdu, self.version)
        if event.state_key is not None:
            self.state[event.state_tuple] = event
        self.last = event
        if self.room_id is None:
            self.room_id = room_id_for_create(pdu, self.version)
        return event


def build_room(version: RoomVersion, key: Any) -> tuple[dict[StateKey, Event], dict[str, Any]]:
    room = RoomBuilder(version, key)
    creator = f"@creator:{SERVER}"
    create_content: dict[str, Any] = {"room_version": version.identifier}
    if not version.create_uses_sender_as_creator:
        create_content["creator"] = creator
    room.add(room.pdu("m.room.create", creator, create_content, ""))
    members = [creator] + [f"@user{i}:{SERVER}" for i in range(50)]
    users = {members[1]: 50} if version.creators_have_infinite_power else {creator: 100,
                                                                           members[1]: 50}
    room.add(room.pdu("m.room.member", creator, {"membership": "join"}, creator))
    room.add(room.pdu("m.room.power_levels", creator, {"users": users}, ""))
    room.add(room.pdu("m.room.join_rules", creator, {"join_rule": "public"}, ""))
    for user in members[1:]:
        room.add(room.pdu("m.room.member", user, {"membership": "join"}, user))
    message = room.pdu("m.room.message", members[7],
                       {"msgtype": "m.text", "body": "Hello, world! Ça va? 🎉 " * 4})
    message["unsigned"] = {"age": 12}
    return room.state, message


def median_us(fn: Callable[[], object], runs: int) -> float:
    for _ in range(min(200, runs)):
        fn()
    samples = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - start)
    return statistics.median(samples) / 1000


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    key = make_key()
    keys = {SERVER: {"ed25519:a1": key.verify_key}}
    names = ["format", "content hash", "event ID", "signature", "auth", "sum"]
    print(f"m.room.message, room of 54 state events, median of {runs} runs, µs")
    print("version " + "".join(f"{n:>14}" for n in names))
    for version in KNOWN_ROOM_VERSIONS.values():
        figures = measure(version, key, keys, runs)
        print(f"{version.identifier:>7} " + "".join(f"{f:14.1f}" for f in figures))


def measure(version: RoomVersion, key: Any, keys: Any, runs: int) -> list[float]:
    state, pdu = build_room(version, key)
    event = Event.from_pdu(pdu, version)
    check_auth_rules(event, state)  # the message is allowed: the figures are real
    steps: list[Callable[[], object]] = [
        lambda: check_pdu_format(pdu, version),
        lambda: check_content_hash(pdu, version),
        lambda: compute_event_id(pdu, version),
        lambda: verify_event_signatures(pdu, version, keys),
        lambda: check_auth_rules(event, state),
    ]
    figures = [median_us(fn, runs) for fn in steps]
    figures.append(sum(figures))
    return figures

if __name__ == "__main__":
    main()
